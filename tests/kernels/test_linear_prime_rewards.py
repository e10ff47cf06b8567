"""linear_prime_rewards: prime_token_rewards with gradients w.r.t. the PRM's hidden states and head weight, on
the Triton path (TRITON_INTERPRET=1) and the chunked CPU path.

- The forward is prime_token_rewards' launch: outputs bitwise equal to it.
- Gradients through all three differentiable outputs (prm_logp, reward, seq_reward_sum) against float64
  autograd of the reference formula on the same rounded inputs, by tests/tolerances.py's ratio rule (at most
  2x PyTorch's own error in the input dtype, the naive GEMM + log_softmax autograd, plus the fp32 floor of
  GRAD_FLOOR_ULPS ulps of max|grad| x sqrt(V) for sums over the vocabulary).
- The reference gets no gradient (prime_spec 4.1).
- Mutation: a backward that drops beta (d reward / d prm_logp = 1 instead of beta) fails the gradient check.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from tolerances import assert_not_worse_than_torch

_spec = importlib.util.spec_from_file_location("_lp_helpers", Path(__file__).with_name("_lp_helpers.py"))
_h = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_h)
_h.ensure_interpreter()
USES_TRITON_INTERPRETER = True  # tests/conftest.py keeps TRITON_INTERPRET=1 for this module's tests only

import primeflow.kernels as K  # noqa: E402
from primeflow.kernels import Backend  # noqa: E402
from primeflow.kernels.linear_logprob import cpu as linear_cpu  # noqa: E402
from primeflow.kernels.prime_rewards import function as fused_fn  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

BETA = 0.3  # not 1, so a backward that forgets beta is visible


@pytest.fixture(params=["triton", "cpu"])
def path(request, monkeypatch):
    """Both implementations; the CPU path with tiny chunks so the backward crosses row and vocab chunks."""
    if request.param == "cpu":
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        monkeypatch.setattr(linear_cpu, "ROWS_PER_CHUNK", 4)
        monkeypatch.setattr(linear_cpu, "COLS_PER_CHUNK", 48)
    expected = Backend.TRITON if request.param == "triton" else Backend.TORCH
    assert K.prime_token_rewards_backend(torch.zeros(1)) is expected
    return request.param


# (N, H, V, cu_seqlens): one tile with an empty sequence; three 16-row interpreter tiles with sequences that
# cross tile boundaries and an odd vocabulary spanning several 64-column splits
CASES = [(13, 24, 65, [0, 5, 5, 11, 13]), (37, 20, 203, [0, 10, 30, 37])]


def _inputs(N, H, V, cu, dtype, gen):
    prm_h, prm_w, labels = _h.make_linear(N, H, V, dtype, gen)
    ref_h, ref_w, _ = _h.make_linear(N, H, V, dtype, gen)
    mask = torch.rand(N, generator=gen) > 0.25
    return labels, prm_h, prm_w, ref_h, ref_w, mask, torch.tensor(cu, dtype=torch.int32)


def _formula(prm_h, prm_w, ref_h, ref_w, labels, mask, cu, beta, logp_fn):
    """(prm_logp, reward, per-sequence reward sums) as prime_spec 3.1 writes them, with autograd."""
    prm_logp = logp_fn(prm_h, prm_w, labels)
    ref_logp = logp_fn(ref_h, ref_w, labels)
    reward = torch.where(mask, beta * (prm_logp - ref_logp), 0.0)
    sums = torch.stack([reward[a:b].sum() for a, b in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True)])
    return prm_logp, reward, sums


def _logp64(h, w, labels):
    z = h @ w.T
    return z.gather(1, labels[:, None])[:, 0] - torch.logsumexp(z, dim=1)


def _grads(outputs, coefs, *leaves):
    loss = sum((o * c).sum() for o, c in zip(outputs, coefs, strict=True))
    return torch.autograd.grad(loss, leaves)


def _check_grads(N, H, V, cu, dtype, generator):
    labels, prm_h, prm_w, ref_h, ref_w, mask, cu_t = _inputs(N, H, V, cu, dtype, generator)
    coefs = [torch.randn(N, generator=generator), torch.randn(N, generator=generator),
             torch.randn(len(cu) - 1, generator=generator)]
    h, w = prm_h.clone().requires_grad_(), prm_w.clone().requires_grad_()
    out = K.linear_prime_rewards(labels, prm=(h, w), ref=(ref_h, ref_w), beta=BETA, mask=mask, cu_seqlens=cu_t)
    dh, dw = _grads((out.prm_logp, out.reward, out.seq_reward_sum), coefs, h, w)
    h64, w64 = prm_h.double().requires_grad_(), prm_w.double().requires_grad_()
    t_dh, t_dw = _grads(_formula(h64, w64, ref_h.double(), ref_w.double(), labels, mask, cu_t, BETA, _logp64),
                        [c.double() for c in coefs], h64, w64)
    hb, wb = prm_h.clone().requires_grad_(), prm_w.clone().requires_grad_()
    b_dh, b_dw = _grads(_formula(hb, wb, ref_h, ref_w, labels, mask, cu_t, BETA, _h.naive_linear), coefs, hb, wb)
    assert dh.dtype == dtype and dw.dtype == dtype
    assert_not_worse_than_torch(dh, b_dh, t_dh, dtype, what="dhidden", reduction=V)
    assert_not_worse_than_torch(dw, b_dw, t_dw, dtype, what="dweight", reduction=V)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("N,H,V,cu", CASES)
def test_grads_vs_float64_autograd_of_the_formula(path, N, H, V, cu, dtype, generator):
    _check_grads(N, H, V, cu, dtype, generator)


@pytest.mark.parametrize("N,H,V,cu", CASES[:1])
def test_forward_is_prime_token_rewards_bitwise_and_ref_gets_no_grad(path, N, H, V, cu, generator):
    labels, prm_h, prm_w, ref_h, ref_w, mask, cu_t = _inputs(N, H, V, cu, torch.float32, generator)
    want = K.prime_token_rewards(labels, prm=(prm_h, prm_w), ref=(ref_h, ref_w), beta=BETA, mask=mask,
                                 cu_seqlens=cu_t)
    rh, rw = ref_h.clone().requires_grad_(), ref_w.clone().requires_grad_()
    h = prm_h.clone().requires_grad_()
    got = K.linear_prime_rewards(labels, prm=(h, prm_w), ref=(rh, rw), beta=BETA, mask=mask, cu_seqlens=cu_t)
    assert got.policy_logp is None
    for name in ("prm_logp", "ref_logp", "reward", "seq_reward_sum", "seq_valid_count"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    (got.reward.sum() + got.seq_reward_sum.sum()).backward()
    assert rh.grad is None and rw.grad is None  # the reference is a constant
    assert h.grad is not None and h.grad.abs().sum() > 0


def test_a_backward_without_beta_fails_the_gradient_check(path, monkeypatch, generator):
    real = fused_fn.prm_logp_grad

    def no_beta(g_logp, g_reward, g_sum, valid, seq, _beta, like):
        return real(g_logp, g_reward, g_sum, valid, seq, 1.0, like)

    monkeypatch.setattr(fused_fn, "prm_logp_grad", no_beta)
    with pytest.raises(AssertionError, match="dhidden|dweight"):
        _check_grads(*CASES[0], torch.float32, generator)


def test_prm_must_be_a_hidden_weight_pair():
    logits = torch.randn(3, 5)
    with pytest.raises(ValueError, match="prm must be a"):
        K.linear_prime_rewards(torch.tensor([0, 1, 2]), prm=logits, ref=logits, beta=0.1)
