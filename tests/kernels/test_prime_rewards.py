"""prime_token_rewards: one Triton launch (TRITON_INTERPRET=1) and the chunked CPU path vs float64 truth.

Models mix the two input forms (logits / (hidden, weight)) and dtypes. The reward is a difference of two
nearly equal log-probs when the PRM starts as a copy of the reference: that case is tested explicitly,
against the naive "subtract bf16 log-probs" baseline the architecture forbids.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from reference64 import prime_token_rewards64
from tolerances import FP32_LOGIT_ULPS, assert_close_to_truth, assert_not_worse_than_torch

_spec = importlib.util.spec_from_file_location("_lp_helpers", Path(__file__).with_name("_lp_helpers.py"))
_h = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_h)
_h.ensure_interpreter()
USES_TRITON_INTERPRETER = True  # tests/conftest.py keeps TRITON_INTERPRET=1 for this module's tests only

import primeflow.kernels as K  # noqa: E402
from primeflow.kernels import Backend, PrimeLogprobs, reference  # noqa: E402
from primeflow.kernels.linear_logprob import cpu as linear_cpu  # noqa: E402
from primeflow.kernels.logprob import torch_op  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.fixture(params=["triton", "cpu"])
def path(request, monkeypatch):
    if request.param == "cpu":
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        monkeypatch.setattr(linear_cpu, "ROWS_PER_CHUNK", 4)
        monkeypatch.setattr(linear_cpu, "COLS_PER_CHUNK", 48)
        monkeypatch.setattr(torch_op, "CHUNK_ELEMENTS", 200)
    expected = Backend.TRITON if request.param == "triton" else Backend.TORCH
    assert K.prime_token_rewards_backend(torch.zeros(1)) is expected
    return request.param


def _models(N, V, dtype, gen):
    h_prm, w_prm, labels = _h.make_linear(N, 24, V, dtype, gen)
    ref_logits, _ = _h.make_logits(N, V, dtype, gen)
    h_pol, w_pol, _ = _h.make_linear(N, 16, V, dtype, gen)
    labels[-1] = 0
    if N > 3:
        labels[3] = 0  # ref row 3 has a -inf padded tail; its label stays in the finite half
    return labels, (h_prm, w_prm), ref_logits, (h_pol, w_pol)


def _naive_logp(model, labels):
    if isinstance(model, torch.Tensor):
        return _h.naive_logits(model, labels)
    return _h.naive_linear(model[0], model[1], labels)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("N,V", [(1, 7), (6, 129)])
@pytest.mark.parametrize("with_policy", [False, True])
def test_vs_float64(path, N, V, dtype, with_policy, generator):
    labels, prm, ref, policy = _models(N, V, dtype, generator)
    policy = policy if with_policy else None
    mask = torch.rand(N, generator=generator) > 0.3
    out = K.prime_token_rewards(labels, prm=prm, ref=ref, policy=policy, beta=0.05, mask=mask)
    assert isinstance(out, PrimeLogprobs)
    truth = prime_token_rewards64(labels, prm=prm, ref=ref, policy=policy, beta=0.05, mask=mask)
    assert (out.policy_logp is None) == (policy is None)
    for name, model, got, want in (("prm", prm, out.prm_logp, truth[1]), ("ref", ref, out.ref_logp, truth[2]),
                                   ("policy", policy, out.policy_logp, truth[0])):
        if model is None:
            continue
        assert got.dtype == torch.float32
        # ref row 1 carries +1e4 (its fp32 lse pieces are still exact here: T = 1, no GEMM)
        assert_not_worse_than_torch(got, _naive_logp(model, labels), want, dtype, what=f"{name}_logp")
    assert_close_to_truth(out.reward, truth[3], dtype, what="reward")
    assert torch.all(out.reward[~mask] == 0)


def test_reward_of_nearly_equal_models_is_precise(path, generator):
    """PRM = reference + 1e-3 noise (as right after initialisation): the reward is tiny and must come out
    with fp32 relative precision, far better than subtracting bf16 log-probs."""
    N, H, V = 8, 32, 300
    hidden, weight, labels = _h.make_linear(N, H, V, torch.float32, generator)
    prm_w = weight + 1e-3 * torch.randn(V, H, generator=generator)
    out = K.prime_token_rewards(labels, prm=(hidden, prm_w), ref=(hidden, weight), beta=1.0)
    truth = prime_token_rewards64(labels, prm=(hidden, prm_w), ref=(hidden, weight), beta=1.0)[3]
    naive_bf16 = (_h.naive_linear(hidden.bfloat16(), prm_w.bfloat16(), labels).bfloat16()
                  - _h.naive_linear(hidden.bfloat16(), weight.bfloat16(), labels).bfloat16()).float()
    err = (out.reward.double() - truth).abs().max().item()
    # The floor is the fp32 rounding of the two models' logits themselves (separate GEMMs: no cancellation)
    max_z = (hidden.double() @ weight.double().T).abs().max().item()
    assert err <= 1e-5 * truth.abs().max().item() + FP32_LOGIT_ULPS * 2.0 ** -24 * max_z, err
    assert err * 100 < (naive_bf16.double() - truth).abs().max().item()


def test_matches_reference_and_single_model_ops(path, generator):
    """Same answer as the reference op and as separate per-model calls (one launch changes nothing).
    Plain logits here: on a +1e4 row the fp32 reference's lse rounds to 1e-3, the op's (max, ls) pair not."""
    labels, prm, _, policy = _models(5, 40, torch.float32, generator)
    ref = torch.randn(5, 40, generator=generator) * 3
    out = K.prime_token_rewards(labels, prm=prm, ref=ref, policy=policy, beta=0.1)
    want = reference.prime_token_rewards(labels, prm=prm, ref=ref, policy=policy, beta=0.1)
    for a, b in zip(out, want, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(out.prm_logp, K.linear_token_logprobs(*prm, labels), atol=2e-5, rtol=2e-5)


# 50 columns: one launch streams each row's whole vocabulary (kernel.py); 150 > the interpreter's 64-column
# split: the vocab-split path (sharded.split_forward)
@pytest.mark.parametrize("V", [50, 150])
def test_batch_invariance_bitwise(path, V, generator):
    labels, prm, ref, policy = _models(9, V, torch.float32, generator)
    full = K.prime_token_rewards(labels, prm=prm, ref=ref, policy=policy, beta=0.1)
    other_ref = ref.clone()
    other_ref[5:] = torch.randn(4, V, generator=generator)
    part = K.prime_token_rewards(labels, prm=prm, ref=other_ref, policy=policy, beta=0.1)
    assert full.seq_reward_sum is None and full.seq_valid_count is None  # not requested (no cu_seqlens)
    for a, b in zip(full[:4], part[:4], strict=True):  # the per-token outputs
        assert torch.equal(a[:5], b[:5])
    if path == "triton":  # fixed tiles and split widths: also independent of N and of a row's place in its tile
        # exact GEMMs (see make_dyadic_linear): the interpreter's tl.dot is the host BLAS, whose summation
        # order depends on the row's position in the tile on AVX2 hosts
        h_prm, w_prm, labels = _h.make_dyadic_linear(9, 24, V, generator)
        h_pol, w_pol, _ = _h.make_dyadic_linear(9, 16, V, generator)
        prm, policy = (h_prm, w_prm), (h_pol, w_pol)
        full = K.prime_token_rewards(labels, prm=prm, ref=ref, policy=policy, beta=0.1)
        for rows in ([7, 2], [8], list(range(1, 9))):
            sub = K.prime_token_rewards(labels[rows], prm=(h_prm[rows], w_prm), ref=ref[rows],
                                        policy=(h_pol[rows], w_pol), beta=0.1)
            for a, b in zip(full[:4], sub[:4], strict=True):
                assert torch.equal(a[rows], b)


def test_nan_propagates_but_masked_reward_is_zero(path, generator):
    labels, prm, ref, _ = _models(4, 20, torch.float32, generator)
    ref = ref.clone()
    ref[1, 3] = float("nan")
    ref[2, 3] = float("nan")
    mask = torch.tensor([1, 1, 0, 1])
    out = K.prime_token_rewards(labels, prm=prm, ref=ref, beta=0.1, mask=mask)
    assert torch.isnan(out.ref_logp[1]) and torch.isnan(out.reward[1])
    assert out.reward[2] == 0 and torch.isfinite(out.reward[[0, 3]]).all()


@pytest.mark.parametrize("bad, match", [
    (dict(prm=torch.zeros(3, 7)), r"prm logits must have shape \[2, V\]"),
    (dict(ref=torch.zeros(2, 8)), "share one vocabulary size"),
    (dict(policy=(torch.zeros(2, 4), torch.zeros(7, 5))), r"policy weight must have shape \[V, 4\]"),
    (dict(prm=[torch.zeros(2, 4)]), "prm must be logits"),
    (dict(labels=torch.tensor([0, 9])), "labels must lie in"),
    (dict(mask=torch.ones(3)), r"mask must have shape \[2\]"),
    (dict(beta=float("nan")), "beta must be a finite number"),
])
def test_bad_input_raises_value_error(bad, match):
    args = dict(labels=torch.tensor([0, 6]), prm=torch.zeros(2, 7), ref=torch.zeros(2, 7), policy=None,
                beta=0.1, mask=None) | bad
    with pytest.raises(ValueError, match=match):
        K.prime_token_rewards(args.pop("labels"), **args)


def test_vocabularies_wider_than_one_split_take_the_split_path(monkeypatch, generator):
    """The Triton path routes V > COLS_PER_SPLIT (64 under the interpreter) through sharded.split_forward and
    keeps the one-launch kernel for narrower ones; both agree with the reference op (test_vs_float64 checks both
paths against float64 at V = 7 and 129)."""
    from primeflow.kernels.prime_rewards import sharded

    assert K.prime_token_rewards_backend(torch.zeros(1)) is Backend.TRITON  # this module runs interpreted
    calls = []
    real = sharded.split_forward
    monkeypatch.setattr(sharded, "split_forward", lambda *args: calls.append(args[1][1].shape[0]) or real(*args))
    for V in (64, 65, 150):
        labels, prm, _, policy = _models(5, V, torch.float32, generator)
        ref = torch.randn(5, V, generator=generator) * 3  # plain logits: see test_matches_reference_...
        out = K.prime_token_rewards(labels, prm=prm, ref=ref, policy=policy, beta=0.1)
        want = reference.prime_token_rewards(labels, prm=prm, ref=ref, policy=policy, beta=0.1)
        for a, b in zip(out, want, strict=True):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5)
    assert calls == [65, 150]
