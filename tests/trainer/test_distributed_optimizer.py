"""parallel.distributed_optimizer: the sharded AdamW gives bitwise the parameters of plain AdamW, survives the
checkpoint round trip, and each DP rank holds only its share of the moments (torchrun, 2 processes, gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.multiproc, pytest.mark.slow]

SCRIPT = Path(__file__).resolve().parent / "zero_parity.py"


def test_sharded_adamw_equals_plain_adamw_and_resumes(tmp_path):
    from primeflow.models import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "tiny", seed=3)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                           "MASTER_PORT", "TRITON_INTERPRET")}
    env["OMP_NUM_THREADS"] = "1"
    out = tmp_path / "result.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(SCRIPT),
           "--out", str(out), str(ckpt)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["dp"] == 2
    assert result["moved"] > 1e-4  # the steps changed the parameters, so equality below means something
    # Same AdamW arithmetic on the same summed gradients, element by element: bitwise, not approximately.
    assert result["diffs"] == [0.0, 0.0, 0.0, 0.0], result["diffs"]
    # Each rank holds part of the moments, and together exactly one copy.
    assert result["moments_all_ranks"] == result["plain_moments"] == result["total_params"]
    assert 0 < result["moments_this_rank"] < result["total_params"]
