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


def linear_token_logprobs64(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                            temperature: float = 1.0):
    """(logp[N], entropy[N]) in float64 of log softmax(hidden @ weight.T / T): float64 logits, then the above."""
    return token_logprobs64(hidden.double() @ weight.double().T, labels, temperature)


def linear_token_logprobs_grads64(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                                  grad_logp: torch.Tensor, grad_entropy: torch.Tensor | None,
                                  temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(dhidden, dweight) in float64 by the chain rule through the closed-form dlogits: dh = dz W, dW = dz^T h."""
    h, w = hidden.double(), weight.double()
    dz = token_logprobs_grad64(h @ w.T, labels, grad_logp, grad_entropy, temperature)
    return dz @ w, dz.T @ h


def prime_token_rewards64(labels: torch.Tensor, *, prm, ref, policy=None, beta: float, mask=None):
    """(policy_logp | None, prm_logp, ref_logp, reward) in float64; a model is logits or (hidden, weight).

    reward = beta * (logp_prm - logp_ref) exactly (float64 has the headroom the fp32 kernels get by forming it
    from (z, lse) pieces), 0 where mask == 0."""
    def logp(model):
        logits = model.double() if isinstance(model, torch.Tensor) else model[0].double() @ model[1].double().T
        return token_logprobs64(logits, labels)[0]

    prm_logp, ref_logp = logp(prm), logp(ref)
    reward = beta * (prm_logp - ref_logp)
    if mask is not None:
        reward = torch.where(mask != 0, reward, torch.zeros_like(reward))
    return (None if policy is None else logp(policy)), prm_logp, ref_logp, reward
