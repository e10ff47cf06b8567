"""Checkpoints under torchrun with 2 processes over gloo (mp_checkpoint.py, run once by the `mp_runs`
fixture), with megatron-core's DDP and optimizer (the distributed one at DP=2): at TP=2 (each rank its own
model/optimizer shard), DP=2 (each rank its optimizer shard, replicated weights split between the writers)
and PP=2 (one stage per rank): save -> load into fresh models is bitwise on every rank (parameters, fp32
main parameters, AdamW moments and steps, schedules, RNG streams, per-rank trainer_state) and training
continues identically; export_hf of the checkpoint equals exporting the live models; both ranks write
their part of every model (fully parallel save)."""

from __future__ import annotations

import pytest


@pytest.mark.multiproc
@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 1), (1, 2)], ids=["tp2", "dp2", "pp2"])
def test_checkpoint_round_trip_two_processes(mp_runs, tp, pp):
    results, run, _, _ = mp_runs
    res = results[f"tp{tp}pp{pp}"]
    dp = 2 // (tp * pp)
    assert res["layout"] == {"tp": tp, "pp": pp, "dp": dp}
    assert res["tensors_compared"] > 20  # bitwise in mp_checkpoint.py (it raises otherwise)
    assert res["export_tensors_equal"] > 10
    assert res["distributed_optimizer"] == (dp > 1)
    # Megatron rank order: TP fastest, then DP, then PP.
    ranks = {f"rank{r:05d}-tp{r % tp:02d}-pp{r // (tp * dp):02d}-dp{(r // tp) % dp:03d}" for r in range(2)}
    want = {f"rng.{r}.pt" for r in ranks} | {f"trainer_state.{r}.json" for r in ranks}
    want |= {f"sched.{role}.pt" for role in ("policy", "prm")}
    assert set(res["files"]) == want | {"manifest.json", "hf", "dist"}
    assert res["dist_writers"] == {"policy": [0, 1], "prm": [0, 1]}
