"""bench/bench_prm_head.py --head-shape: the fused and two-head PRM heads it times compute the same loss
gradients (so the ratio compares equal work), and a dropped reference term would show: the two-head loss
without the reference's log-probs has different gradients."""

from __future__ import annotations

import torch


def test_head_shape_run_times_two_heads_with_the_same_gradients(bench_module):
    torch.manual_seed(0)
    res = bench_module("bench_prm_head").head_shape_run(96, 24, 300, repeats=1)
    assert res["shape"] == {"n_rows": 96, "hidden": 24, "vocab": 300, "dtype": "float32", "sequences": 16}
    # fp32 sums in different orders (kernel vs torch.index_add); the gradients are O(1) relative to their max
    assert res["grad_rel_diff_fused_vs_two_head"]["dhidden"] < 1e-5
    assert res["grad_rel_diff_fused_vs_two_head"]["dweight"] < 1e-5
    for head in ("fused", "two_head"):
        assert res[head]["min_s"] > 0 and res[head]["median_s"] >= res[head]["min_s"]
    assert res["fused_over_two_head_median"] > 0


def test_the_gradient_agreement_check_can_fail(monkeypatch, bench_module):
    """With beta doubled on one side only the gradients differ: the agreement number is not vacuous."""
    real = bench_module("bench_prm_head").head_shape_run
    from primeflow import kernels

    original = kernels.linear_prime_rewards

    def doubled(labels, *, beta, **kw):
        return original(labels, beta=2 * beta, **kw)

    monkeypatch.setattr(kernels, "linear_prime_rewards", doubled)
    res = real(96, 24, 300, repeats=1)
    assert res["grad_rel_diff_fused_vs_two_head"]["dweight"] > 1e-2
