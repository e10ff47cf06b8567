"""ppo_clip_loss, prm_ce_loss and prm_pairwise_accuracy on CPU tensors vs float64 truth.

Truth: tests/kernels/rl_truth64.py (per-token Python loops with explicit derivatives, spec 4.1, 4.5, 8),
from the same rounded inputs. Losses are held to the fp32 table; gradients to the gradient table of the
logp dtype (computed in fp32, rounded once to that dtype). The references are also checked with
torch.autograd.gradcheck in float64. The Triton paths run the same checks in test_rl_ops_triton.py.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import primeflow.kernels as K
import pytest
import torch
from primeflow.kernels import reference
from tolerances import assert_close_to_truth, prm_ce_cancel_floor


def _load_truth():
    spec = importlib.util.spec_from_file_location(
        "_primeflow_tests_rl_truth64", Path(__file__).with_name("rl_truth64.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


truth = _load_truth()
AGGS = ["token-mean", "seq-mean-token-mean"]
PPO = {"public": K.ppo_clip_loss, "reference": reference.ppo_clip_loss}
PRM = {"public": K.prm_ce_loss, "reference": reference.prm_ce_loss}
SHAPES = [(1, 1), (3, 17), (6, 40)]


def ragged_mask(generator, b, t, *, allow_empty=True):
    lengths = torch.randint(0 if allow_empty else 1, t + 1, (b,), generator=generator)
    lengths[-1] = t
    return torch.arange(t)[None, :] < lengths[:, None]


def ppo_inputs(generator, b, t, dtype):
    old = -torch.rand(b, t, generator=generator) * 3
    # log-ratio spread of 0.3: many tokens fall outside [0.8, 1.2], so both branches are exercised
    logp = (old + 0.3 * torch.randn(b, t, generator=generator)).to(dtype)
    adv = torch.randn(b, t, generator=generator)
    return logp, old, adv, ragged_mask(generator, b, t)


# ---- PPO ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", PPO)
@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{s[0]}-T{s[1]}")
def test_ppo_matches_truth(generator, impl, agg, dtype, shape):
    logp, old, adv, mask = ppo_inputs(generator, *shape, dtype)
    logp.requires_grad_(True)
    loss, stats = PPO[impl](logp, old, adv, mask, clip=0.2, agg=agg, return_stats=True)
    (grad,) = torch.autograd.grad(loss * 3.0, logp)  # a non-unit grad_output must scale the gradient
    want_loss, want_grad, want_clipfrac, want_kl = truth.ppo_truth(
        logp.detach(), old, adv, mask, clip=0.2, agg=agg
    )
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert grad.dtype == dtype
    assert_close_to_truth(loss, torch.tensor(want_loss), torch.float32, what=f"ppo loss {impl} {agg}")
    assert_close_to_truth(grad, 3.0 * want_grad, dtype, grad=True, what=f"ppo grad {impl} {agg}")
    assert_close_to_truth(stats.clipfrac, torch.tensor(want_clipfrac), torch.float32, what="clipfrac")
    assert_close_to_truth(stats.ppo_kl, torch.tensor(want_kl), torch.float32, what="ppo_kl")
    assert not stats.clipfrac.requires_grad


@pytest.mark.parametrize("agg", AGGS)
def test_ppo_reference_gradcheck(generator, agg):
    logp, old, adv, mask = ppo_inputs(generator, 3, 7, torch.float64)
    logp.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: reference.ppo_clip_loss(x, old.double(), adv.double(), mask, clip=0.2, agg=agg), (logp,)
    )


def test_ppo_hand_computed():
    # One row, 3 valid tokens, clip 0.2. log-ratios [log 1.5, log 0.5, 0], advantages [1, 1, -2]:
    # t0: r=1.5, A=1: max(-1.5, -1.2) = -1.2 (clipped, zero slope); t1: r=0.5, A=1: max(-0.5, -0.8) = -0.5
    # (unclipped, slope -0.5); t2: r=1, A=-2: max(2, 2) = 2 (slope 2). Token-mean = (-1.2 - 0.5 + 2)/3 = 0.1.
    # Gradient: [0, -0.5, 2]/3; clipfrac 1/3; ppo_kl = mean(-log r) = -(log 1.5 + log 0.5)/3.
    logp = torch.tensor([[math.log(1.5), math.log(0.5), 0.0, 5.0]], requires_grad=True)
    old, adv = torch.zeros(1, 4), torch.tensor([[1.0, 1.0, -2.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    for fn in PPO.values():
        loss, stats = fn(logp, old, adv, mask, return_stats=True)
        (grad,) = torch.autograd.grad(loss, logp)
        assert abs(loss.item() - 0.1) < 1e-6
        torch.testing.assert_close(grad, torch.tensor([[0.0, -0.5 / 3, 2 / 3, 0.0]]))
        assert abs(stats.clipfrac.item() - 1 / 3) < 1e-7
        assert abs(stats.ppo_kl.item() + (math.log(1.5) + math.log(0.5)) / 3) < 1e-7


def test_ppo_aggregations_differ_as_specified():
    # Rows of length 1 and 3 with per-token losses [a] and [b, b, b] (r = 1, so loss = -A):
    # token-mean = (a + 3b)/4, seq-mean-token-mean = (a + b)/2. An all-padding row is skipped by the latter.
    logp = torch.zeros(3, 3)
    adv = torch.tensor([[-4.0, 0, 0], [-1.0, -1.0, -1.0], [7.0, 7.0, 7.0]])
    mask = torch.tensor([[1, 0, 0], [1, 1, 1], [0, 0, 0]])
    for fn in PPO.values():
        assert abs(fn(logp, logp, adv, mask, agg="token-mean").item() - (4 + 3) / 4) < 1e-6
        assert abs(fn(logp, logp, adv, mask, agg="seq-mean-token-mean").item() - (4 + 1) / 2) < 1e-6
        assert fn(logp, logp, adv, torch.zeros(3, 3), agg="seq-mean-token-mean").item() == 0.0


@pytest.mark.parametrize("impl", PPO)
def test_ppo_nan_propagates_and_padding_is_ignored(generator, impl):
    logp, old, adv, mask = ppo_inputs(generator, 3, 8, torch.float32)
    mask[0, 0] = True
    garbage = torch.where(mask, logp, float("nan")).requires_grad_(True)
    loss = PPO[impl](garbage, old, adv, mask)
    (grad,) = torch.autograd.grad(loss, garbage)
    assert loss.isfinite() and grad.isfinite().all() and (grad[~mask] == 0).all()
    bad = logp.clone()
    bad[0, 0] = float("nan")
    bad.requires_grad_(True)
    loss = PPO[impl](bad, old, adv, mask)
    (grad,) = torch.autograd.grad(loss, bad)
    assert loss.isnan() and grad[0, 0].isnan()


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        (dict(logp=torch.zeros(2)), r"logp must be 2-D"),
        (dict(old_logp=torch.zeros(2, 4)), r"old_logp must have shape \[B, T\] = \[2, 3\]"),
        (dict(advantages=torch.zeros(3, 3)), r"advantages must have shape"),
        (dict(mask=torch.ones(2, 4)), r"mask must have shape"),
        (dict(mask=torch.full((2, 3), 0.5)), r"mask must contain only 0 and 1"),
        (dict(clip=0.0), r"clip must be > 0.0"),
        (dict(agg="seq-mean-token-sum"), r"agg must be one of \['token-mean', 'seq-mean-token-mean'\]"),
    ],
)
def test_ppo_bad_input(kwargs, pattern):
    args = (
        dict(
            logp=torch.zeros(2, 3),
            old_logp=torch.zeros(2, 3),
            advantages=torch.zeros(2, 3),
            mask=torch.ones(2, 3),
        )
        | kwargs
    )
    with pytest.raises(ValueError, match=pattern):
        K.ppo_clip_loss(
            args.pop("logp"), args.pop("old_logp"), args.pop("advantages"), args.pop("mask"), **args
        )


# ---- PRM cross-entropy ----------------------------------------------------------------------------
def prm_inputs(generator, b, t, dtype):
    ref = -torch.rand(b, t, generator=generator) * 3
    prm = (ref + 0.5 * torch.randn(b, t, generator=generator)).to(dtype)
    outcome = torch.randint(0, 5, (b,), generator=generator).float() / 4
    return prm, ref, ragged_mask(generator, b, t), outcome


@pytest.mark.parametrize("impl", PRM)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{s[0]}-T{s[1]}")
@pytest.mark.parametrize("beta", [0.05, 2.0])
def test_prm_ce_matches_truth(generator, impl, dtype, shape, beta):
    prm, ref, mask, outcome = prm_inputs(generator, *shape, dtype)
    prm.requires_grad_(True)
    ref.requires_grad_(True)  # must still get no gradient: spec 4.1, gradients flow only through the PRM
    loss = PRM[impl](prm, ref, mask, outcome, beta=beta)
    loss.mul(0.5).backward()
    want_loss, want_grad = truth.prm_ce_truth(prm.detach(), ref.detach(), mask, outcome, beta=beta)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert_close_to_truth(loss, torch.tensor(want_loss), torch.float32, what=f"prm loss {impl}")
    # soft labels can cancel sigmoid(R) - outcome below R's own fp32 rounding: tolerances.prm_ce_cancel_floor
    cancel_floor = prm_ce_cancel_floor(prm, ref, mask, beta=beta, scale=0.5)
    assert_close_to_truth(prm.grad, 0.5 * want_grad, dtype, grad=True, what=f"prm grad {impl}",
                          extra_atol=cancel_floor)
    assert ref.grad is None


def test_prm_ce_reference_gradcheck(generator):
    prm, ref, mask, outcome = prm_inputs(generator, 4, 6, torch.float64)
    prm.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: reference.prm_ce_loss(x, ref.double(), mask, outcome.double(), beta=0.7), (prm,)
    )


@pytest.mark.parametrize("impl", PRM)
def test_prm_ce_initial_value_and_extremes(impl):
    fn = PRM[impl]
    logp = -torch.rand(4, 5)
    mask = torch.ones(4, 5)
    outcome = torch.tensor([0.0, 1.0, 0.25, 1.0])
    # prm == ref (initialization): R = 0, loss = ln 2 whatever the labels (spec 3.2).
    assert abs(fn(logp, logp, mask, outcome, beta=0.05).item() - math.log(2)) < 1e-6
    # |R| = 1e4: logsigmoid keeps it finite; a wrong hard label costs |R|, a right one ~0.
    prm = logp + torch.tensor([[1e3], [1e3], [0.0], [-1e3]])  # 5 tokens * 1e3 * beta 2 = 1e4
    want = (1e4 + 0.0 + math.log(2) + 1e4) / 4
    assert abs(fn(prm, logp, mask, outcome, beta=2.0).item() - want) / want < 1e-6


@pytest.mark.parametrize("impl", PRM)
def test_prm_ce_nan_propagates_and_padding_is_ignored(generator, impl):
    prm, ref, mask, outcome = prm_inputs(generator, 3, 6, torch.float32)
    mask[0, 0] = True
    garbage = torch.where(mask, prm, float("nan")).requires_grad_(True)
    loss = PRM[impl](garbage, ref, mask, outcome, beta=0.5)
    loss.backward()
    assert loss.isfinite() and garbage.grad.isfinite().all() and (garbage.grad[~mask] == 0).all()
    bad = prm.clone()
    bad[0, 0] = float("nan")
    assert PRM[impl](bad, ref, mask, outcome, beta=0.5).isnan()
    assert PRM[impl](prm, ref, mask, torch.tensor([float("nan"), 0, 1]), beta=0.5).isnan()


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        (dict(prm_logp=torch.zeros(2, 3, dtype=torch.int32)), r"prm_logp must be a floating-point"),
        (dict(ref_logp=torch.zeros(2, 2)), r"ref_logp must have shape \[B, T\] = \[2, 3\]"),
        (dict(mask=torch.ones(3, 3)), r"mask must have shape"),
        (dict(outcome=torch.zeros(3)), r"outcome must have shape \[B\] = \[2\]"),
        (dict(outcome=torch.tensor([0.5, 1.5])), r"outcome must lie in \[0, 1\]"),
        (dict(beta=0.0), r"beta must be > 0.0"),
        (dict(beta=float("nan")), r"beta must be a finite number"),
    ],
)
def test_prm_ce_bad_input(kwargs, pattern):
    args = (
        dict(
            prm_logp=torch.zeros(2, 3),
            ref_logp=torch.zeros(2, 3),
            mask=torch.ones(2, 3),
            outcome=torch.zeros(2),
            beta=0.05,
        )
        | kwargs
    )
    with pytest.raises(ValueError, match=pattern):
        K.prm_ce_loss(
            args.pop("prm_logp"), args.pop("ref_logp"), args.pop("mask"), args.pop("outcome"), **args
        )


# ---- PRM pairwise accuracy (spec 4.5) -------------------------------------------------------------
def test_pairwise_accuracy_vs_truth(generator):
    for k in (2, 4, 5):
        b, t = 6 * k, 7
        rewards = torch.randn(b, t, generator=generator)
        mask = ragged_mask(generator, b, t, allow_empty=False)
        outcome = torch.randint(0, 3, (b,), generator=generator).float() / 2  # equal-outcome pairs and groups
        rewards[:k] = 0.0  # one group of exact reward ties
        got = K.prm_pairwise_accuracy(rewards, mask, outcome, group_size=k)
        scores = torch.where(mask, rewards, 0.0).double().sum(-1)
        want = truth.pairwise_accuracy_truth(scores, outcome, group_size=k)
        assert abs(got.item() - want) < 1e-6, (k, got.item(), want)


def test_pairwise_accuracy_hand_computed():
    mask = torch.ones(9, 1)
    # group 0: outcomes [1, 0.5, 0], rewards [3, 1, 2]: pairs (0,1) |da|=.5 right, (0,2) 1 right,
    # (1,2) .5 wrong -> 1.5/2 = 0.75. group 1: all outcomes equal -> 0.5. group 2: outcomes [0, 0, 1],
    # rewards all equal -> the two differing pairs are ties, never "the same sign" -> 0.
    rewards = torch.tensor([3.0, 1.0, 2.0, 5.0, -1.0, 0.0, 4.0, 4.0, 4.0])[:, None]
    outcome = torch.tensor([1.0, 0.5, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0])
    got = K.prm_pairwise_accuracy(rewards, mask, outcome, group_size=3)
    assert abs(got.item() - (0.75 + 0.5 + 0.0) / 3) < 1e-7
    assert reference.prm_pairwise_accuracy(-rewards, mask, outcome, group_size=3).item() == pytest.approx(
        (0.25 + 0.5 + 0.0) / 3
    )
    outcome_nan = outcome.clone()
    outcome_nan[4] = float("nan")
    assert K.prm_pairwise_accuracy(rewards, mask, outcome_nan, group_size=3).isnan()
    with pytest.raises(ValueError, match=r"group_size must be >= 2"):
        K.prm_pairwise_accuracy(rewards, mask, outcome, group_size=1)
    with pytest.raises(ValueError, match=r"multiple of group_size=2"):
        K.prm_pairwise_accuracy(rewards, mask, outcome, group_size=2)


def test_backends_reported():
    x = torch.zeros(1, 1)
    assert K.ppo_clip_loss_backend(x) in ("torch", "triton") and K.prm_ce_loss_backend(x) in (
        "torch",
        "triton",
    )
