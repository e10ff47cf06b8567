"""The float64 ground truth (reference64.py) checked against float64 autograd of the definitions.

reference64's gradients are closed forms (dlogp/dz = onehot - p, dH/dz = -p (log p + H)), the same formulas
the kernels implement; a shared mistake in the formula would pass every kernel test. Here autograd
differentiates the definitions themselves, logp = log_softmax(z)[label] and H = -sum p log p with
p = softmax(z), written with torch's own log_softmax. Float64 on O(1)-O(10) logits: agreement within 1e-12 of
the largest gradient entry (both sides are float64 evaluations of the same function, a few hundred
roundings of 2^-53 apart).
"""

from __future__ import annotations

import pytest
import torch
from reference64 import linear_token_logprobs_grads64, token_logprobs64, token_logprobs_grad64

REL = 1e-12


def _by_autograd(logits: torch.Tensor, labels: torch.Tensor, g_logp: torch.Tensor, g_ent: torch.Tensor | None,
                 temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    z = (logits.double() / temperature).requires_grad_()
    log_p = torch.log_softmax(z, dim=-1)
    logp = log_p.gather(-1, labels[:, None]).squeeze(-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    total = (logp * g_logp.double()).sum() + (0 if g_ent is None else (entropy * g_ent.double()).sum())
    (grad_z,) = torch.autograd.grad(total, z)
    return logp.detach(), entropy.detach(), grad_z / temperature


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert float((got - want).abs().max()) <= REL * max(float(want.abs().max()), 1.0)


@pytest.mark.parametrize("with_entropy", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_closed_form_logits_gradient_equals_autograd(generator, with_entropy, temperature):
    n, v = 9, 57
    logits = torch.randn(n, v, generator=generator, dtype=torch.float64) * 3
    logits[1] += 40.0  # a large common offset
    logits[2, :10] += 12.0  # a peaked distribution
    labels = torch.randint(0, v, (n,), generator=generator)
    g_logp, g_ent = torch.randn(n, generator=generator), torch.randn(n, generator=generator)
    g_ent = g_ent if with_entropy else None
    logp, entropy, grad = _by_autograd(logits, labels, g_logp, g_ent, temperature)
    want_logp, want_entropy = token_logprobs64(logits, labels, temperature)
    _close(want_logp, logp)
    _close(want_entropy, entropy)
    _close(token_logprobs_grad64(logits, labels, g_logp, g_ent, temperature), grad)


def test_closed_form_linear_gradients_equal_autograd(generator):
    n, h, v = 7, 12, 33
    hidden = torch.randn(n, h, generator=generator, dtype=torch.float64).requires_grad_()
    weight = (torch.randn(v, h, generator=generator, dtype=torch.float64) / 2).requires_grad_()
    labels = torch.randint(0, v, (n,), generator=generator)
    g_logp, g_ent = torch.randn(n, generator=generator), torch.randn(n, generator=generator)
    log_p = torch.log_softmax((hidden @ weight.T) / 0.8, dim=-1)
    total = (log_p.gather(-1, labels[:, None]).squeeze(-1) * g_logp.double()).sum() - (
        (log_p.exp() * log_p).sum(-1) * g_ent.double()).sum()
    dh, dw = torch.autograd.grad(total, (hidden, weight))
    got_dh, got_dw = linear_token_logprobs_grads64(hidden.detach(), weight.detach(), labels, g_logp, g_ent, 0.8)
    _close(got_dh, dh)
    _close(got_dw, dw)
