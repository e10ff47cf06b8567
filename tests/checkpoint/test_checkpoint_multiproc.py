"""Checkpoints under torchrun with 2 processes over gloo: TP=2 (each rank its own model/optimizer shard) and
DP=2 (dp_rank 0 writes the replicated shards, every rank its RNG): bitwise save -> load -> continue on every
rank (mp_checkpoint.py), a wrong layout fails on every rank, and `primeflow export` of the TP=2 checkpoint
(re-launching itself under torchrun) writes the same HF tensors as exporting the live models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent


@pytest.mark.multiproc
def test_checkpoint_round_trip_two_processes(tiny_ckpt, tmp_path, seed):
    run, live, out = tmp_path / "run", tmp_path / "live", tmp_path / "result.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(HERE / "mp_checkpoint.py"), "--tp", "2", "1", "--ckpt", str(tiny_ckpt), "--run-dir", str(run),
           "--live-export", str(live), "--out", str(out), "--seed", str(seed)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    results = json.loads(out.read_text())
    for tp in (2, 1):
        res = results[f"tp{tp}"]
        assert res["layout"] == {"tp": tp, "dp": 2 // tp}
        assert res["tensors_compared"] > 50
        assert f"saved with layout tp={tp} pp=1 dp={2 // tp} (world 2)" in res["layout_error"]
        # TP=2: one model/optimizer/scheduler shard per TP rank. DP=2: one copy, written by dp_rank 0.
        shards = {f"tp{t:02d}-pp00" for t in range(tp)}
        want = {f"{kind}.{role}.{s}.pt" for kind in ("model", "optim", "sched") for role in ("policy", "prm")
                for s in shards}
        ranks = {f"rank{r:05d}-tp{r % tp:02d}-pp00-dp{r // tp:03d}" for r in range(2)}
        want |= {f"rng.{r}.pt" for r in ranks} | {f"trainer_state.{r}.json" for r in ranks}
        assert set(res["files"]) == want | {"manifest.json", "hf"}

    # The TP=2 checkpoint exported from a single process: `primeflow export` re-launches itself under torchrun.
    export = subprocess.run([sys.executable, "-m", "primeflow", "export", "--run", str(run / "tp2"), "--out",
                             str(tmp_path / "exported")], capture_output=True, text=True, timeout=600, env=env)
    assert export.returncode == 0, f"export failed:\n{export.stdout[-3000:]}\n{export.stderr[-6000:]}"
    assert "--nproc-per-node=2" in export.stderr
    for role in ("policy", "prm"):
        got = load_file(str(tmp_path / "exported" / role / "model.safetensors"))
        ref = load_file(str(live / "tp2" / role / "model.safetensors"))
        assert got.keys() == ref.keys() and len(got) > 10
        for name in got:
            assert torch.equal(got[name], ref[name]), f"{role}: {name}"
