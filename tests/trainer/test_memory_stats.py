"""The peak-memory metric sees a real allocation (in a fresh process, so no earlier peak can hide it)."""

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
before = peak_memory_metrics()["memory/peak_rss_gb"]
resident = current_rss_gb()
block = torch.ones(NBYTES // 4, dtype=torch.float32)  # written, so every page is resident
after = peak_memory_metrics()["memory/peak_rss_gb"]
del block
released = peak_memory_metrics()["memory/peak_rss_gb"]
print(json.dumps([before, resident, after, released]))
"""


def _probe(nbytes: int) -> list[float]:
    out = subprocess.run([sys.executable, "-c", PROBE.replace("NBYTES", str(nbytes))], capture_output=True,
                         text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_peak_rss_rises_by_the_allocation_and_stays_at_the_peak():
    nbytes = 400 * 2**20
    before, resident, after, released = _probe(nbytes)
    assert 0.01 < resident <= before < 8, (resident, before)
    # The new peak is what was resident plus the 0.419 GB block (allocator slack aside). Measured from the
    # resident size, not the earlier peak: importing torch peaks above what stays resident.
    assert 0.95 * nbytes / 1e9 <= after - resident <= 1.2 * nbytes / 1e9, (resident, after)
    assert released == after  # a peak, not the current size
