"""bench/bench_scaling.py's plan and budget logic (no measurement: the sweep itself is a benchmark)."""

from __future__ import annotations


def test_plan_covers_every_case_cheapest_first(bench_module):
    scaling = bench_module("bench_scaling")
    points = scaling.plan(896)
    costs = [scaling.flops(p["op"], p["kind"], p["N"], p["H"], p["V"]) for p in points]
    assert costs == sorted(costs)
    for (op, kind), (n_sweep, n_for_v) in scaling.CASES.items():
        ns = sorted(p["N"] for p in points if (p["op"], p["kind"], p["sweep"]) == (op, kind, "N"))
        vs = sorted(p["V"] for p in points if (p["op"], p["kind"], p["sweep"]) == (op, kind, "V"))
        assert ns == sorted(n_sweep) and vs == sorted(scaling.V_SWEEP)
        assert {p["N"] for p in points if (p["op"], p["kind"], p["sweep"]) == (op, kind, "V")} == {n_for_v}
    n, h, v = 3, 5, 7
    assert scaling.flops("linear_token_logprobs", "forward", n, h, v) == 2 * n * h * v
    assert scaling.flops("linear_token_logprobs", "forward+backward", n, h, v) == 6 * n * h * v
    assert scaling.flops("prime_token_rewards", "forward", n, h, v) == 3 * 2 * n * h * v


def test_spent_budget_records_skipped_points(bench_module):
    scaling = bench_module("bench_scaling")
    points = scaling.plan(16)[:3]
    rows = scaling.run(points, budget_s=-1.0, log=lambda *_: None)
    assert len(rows) == 2 * len(points)
    assert all(r["skipped"] == "wall-clock budget spent" for r in rows)
    assert sorted(r["provider"] for r in rows) == sorted(scaling.PROVIDERS * len(points))
