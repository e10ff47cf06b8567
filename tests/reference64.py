"""Float64 ground truth written independently of primeflow's references (no log_softmax reuse).

Tests compare every implementation, including `primeflow.kernels.reference`, against these.
"""

from __future__ import annotations

import torch


def token_logprobs64(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0):
    """(logp[N], entropy[N]) in float64: z = x/T, lse = m + log sum exp(z - m), logp = z_label - lse."""
    z = logits.double() / temperature
    m = z.max(dim=-1, keepdim=True).values
    shifted = z - m
    sum_exp = shifted.exp().sum(-1, keepdim=True)
    lse = m + sum_exp.log()
    logp = z.gather(-1, labels[:, None]) - lse
    p = (z - lse).exp()
    # H = lse - sum p*z; written on shifted values (p * (z - m)) so a +1e4 offset does not cancel.
    p_shift = torch.where(p > 0, p * shifted, torch.zeros_like(p))
    entropy = sum_exp.log() - p_shift.sum(-1, keepdim=True)
    return logp.squeeze(-1), entropy.squeeze(-1)


def token_logprobs_grad64(logits: torch.Tensor, labels: torch.Tensor, grad_logp: torch.Tensor,
                          grad_entropy: torch.Tensor | None, temperature: float = 1.0) -> torch.Tensor:
    """d/dlogits of sum(grad_logp*logp + grad_entropy*entropy), in float64, in closed form.

    dlogp/dz_j = [j == label] - p_j;  dH/dz_j = -p_j * (log p_j + H);  dz/dx = 1/T.
    """
    z = logits.double() / temperature
    lse = torch.logsumexp(z, dim=-1, keepdim=True)
    log_p = z - lse
    p = log_p.exp()
    onehot = torch.zeros_like(z).scatter_(-1, labels[:, None], 1.0)
    grad_z = grad_logp.double()[:, None] * (onehot - p)
    if grad_entropy is not None:
        entropy = -(torch.where(p > 0, p * log_p, torch.zeros_like(p))).sum(-1, keepdim=True)
        term = torch.where(p > 0, p * (log_p + entropy), torch.zeros_like(p))
        grad_z = grad_z - grad_entropy.double()[:, None] * term
    return grad_z / temperature
