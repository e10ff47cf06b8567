"""bench/prime_vs_rloo.py --reuse MODE=DIR: a finished run of exactly --steps steps is reused, anything else is
refused with the file named (a reused run must cover the same steps as the fresh ones it is compared with)."""

from __future__ import annotations

import json

import pytest


def _write(run_dir, steps):
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "outcome_acc": 0.5}) + "\n"
                                                   for s in steps))


def test_reuse_takes_complete_runs_and_refuses_others(tmp_path, bench_module):
    pvr = bench_module("prime_vs_rloo")
    assert pvr.parse_reuse([f"rloo={tmp_path}"]) == {"rloo": tmp_path}
    with pytest.raises(SystemExit, match="expected MODE=DIR with MODE one of prime, rloo"):
        pvr.parse_reuse(["ppo=/x"])
    _write(tmp_path / "rloo_seed0", range(1, 4))
    assert [r["step"] for r in pvr.reused_rows(tmp_path / "rloo_seed0", 3)] == [1, 2, 3]
    with pytest.raises(SystemExit, match=r"rloo_seed0/metrics.jsonl holds steps 1..3, not 1..5"):
        pvr.reused_rows(tmp_path / "rloo_seed0", 5)
    _write(tmp_path / "rloo_seed1", [1, 3])  # a gap (a resumed run that lost a step) is refused too
    with pytest.raises(SystemExit, match="not 1..2"):
        pvr.reused_rows(tmp_path / "rloo_seed1", 2)
    with pytest.raises(SystemExit, match="does not exist"):
        pvr.reused_rows(tmp_path / "rloo_seed9", 3)
