"""`primeflow export` of a TP=2 checkpoint started as one plain process: it re-launches itself under
torchrun with 2 processes and writes the same HF tensors as exporting the live models did."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file


@pytest.mark.multiproc
def test_export_cli_relaunches_under_torchrun(mp_runs, tmp_path):
    _, run, live, _ = mp_runs
    out = tmp_path / "exported"
    proc = subprocess.run([sys.executable, "-m", "primeflow", "export", "--run", str(run / "tp2pp1"), "--out",
                           str(out)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"export failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    assert "--nproc-per-node=2" in proc.stderr
    assert f"policy: {out / 'policy'}" in proc.stdout and f"prm: {out / 'prm'}" in proc.stdout
    for role in ("policy", "prm"):
        got = load_file(str(out / role / "model.safetensors"))
        ref = load_file(str(live / "tp2pp1" / role / "model.safetensors"))
        assert got.keys() == ref.keys() and len(got) > 10
        for name in got:
            assert torch.equal(got[name], ref[name]), f"{role}: {name}"
