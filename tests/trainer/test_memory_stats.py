"""The peak-memory metric sees a real allocation (in a fresh process, with a block sized to end above any
earlier peak, such as the one importing torch leaves)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")

PROBE = """
import json, resource, torch
from primeflow.trainer.memory_stats import peak_memory_metrics
def current_rss_gb():  # resident now (not the peak), from /proc
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 1e9
resident = current_rss_gb()
before = peak_memory_metrics()["memory/peak_rss_gb"]
# Imports can peak far above what stays resident (measured 1.1 GB on a fresh install), so the block is sized
# to end above the earlier peak: otherwise the new peak could be the old one and prove nothing.
nbytes = int((before - resident) * 1e9) + EXTRA
block = torch.ones(nbytes // 4, dtype=torch.float32)  # written, so every page is resident
after = peak_memory_metrics()["memory/peak_rss_gb"]
del block
released = peak_memory_metrics()["memory/peak_rss_gb"]
print(json.dumps([resident, before, nbytes, after, released]))
"""


def _probe(extra: int) -> list[float]:
    out = subprocess.run([sys.executable, "-c", PROBE.replace("EXTRA", str(extra))], capture_output=True,
                         text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_peak_rss_rises_by_the_allocation_and_stays_at_the_peak():
    resident, before, nbytes, after, released = _probe(400 * 2**20)
    # The resident size is read first: the peak read after it can only be higher.
    assert 0.01 < resident <= before < 8, (resident, before)
    # The new peak is what was resident plus the block (allocator slack aside); the block ends 0.42 GB above
    # the earlier peak, so that peak cannot stand in for it.
    assert 0.95 * nbytes / 1e9 <= after - resident <= nbytes / 1e9 + 0.05, (resident, nbytes, after)
    assert after > before + 0.3
    assert released == after  # a peak, not the current size
