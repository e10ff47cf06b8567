"""Checkpoints under torchrun with 2 processes over gloo (mp_checkpoint.py, run once by the `mp_runs`
fixture): at TP=2 (each rank its own model/optimizer shard), DP=2 (dp_rank 0 writes the replicated shards,
every rank its RNG) and PP=2 (one stage per rank): save -> load into fresh models is bitwise on every rank
(parameters, AdamW moments, schedulers, RNG streams, per-rank trainer_state) and training continues
identically; export_hf of the checkpoint equals exporting the live models; a wrong layout fails on every
rank with the layout error."""

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
    assert f"saved with layout tp={tp} pp={pp} dp={dp} (world 2)" in res["layout_error"]
    # One model/optimizer/scheduler file per (TP, PP) shard; with DP=2 one copy, written by dp_rank 0.
    shards = {f"tp{t:02d}-pp{p:02d}" for t in range(tp) for p in range(pp)}
    want = {f"{kind}.{role}.{s}.pt" for kind in ("model", "optim", "sched") for role in ("policy", "prm")
            for s in shards}
    # Megatron rank order: TP fastest, then DP, then PP.
    ranks = {f"rank{r:05d}-tp{r % tp:02d}-pp{r // (tp * dp):02d}-dp{(r // tp) % dp:03d}" for r in range(2)}
    want |= {f"rng.{r}.pt" for r in ranks} | {f"trainer_state.{r}.json" for r in ranks}
    assert set(res["files"]) == want | {"manifest.json", "hf"}
