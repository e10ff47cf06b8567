"""Reference PPO clipped surrogate (prime_spec section 8), plain fp32 PyTorch with autograd.

Legend: B response rows, T positions.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._rl_validate import validate_ppo_args


class PPOStats(NamedTuple):
    """Detached 0-d fp32 metrics, token-means over the valid tokens whatever `agg` is (as verl logs them)."""

    clipfrac: torch.Tensor  # fraction of tokens where the clipped term is the larger loss (`pg_clipfrac`)
    ppo_kl: torch.Tensor  # mean of old_logp - logp, the usual first-order KL estimate


def ppo_clip_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: float = 0.2,
    agg: str = "token-mean",
    return_stats: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, PPOStats]:
    """Same contract as `primeflow.kernels.ppo_clip_loss`; gradients flow to `logp` only.

    Math in fp32 (fp64 when logp is fp64, so torch.autograd.gradcheck can run on it).
    """
    valid_BT = validate_ppo_args(logp, old_logp, advantages, mask, clip=clip, agg=agg)
    dtype = torch.promote_types(logp.dtype, torch.float32)
    # Padding is masked on the inputs, so garbage there (inf, NaN) reaches neither the loss nor the gradient.
    log_ratio_BT = torch.where(valid_BT, logp.to(dtype) - old_logp.detach().to(dtype), 0.0)
    adv_BT = torch.where(valid_BT, advantages.detach().to(dtype), 0.0)
    ratio_BT = torch.exp(log_ratio_BT)
    pg_unclipped_BT = -adv_BT * ratio_BT
    pg_clipped_BT = -adv_BT * torch.clamp(ratio_BT, 1.0 - clip, 1.0 + clip)
    loss_BT = torch.where(valid_BT, torch.maximum(pg_unclipped_BT, pg_clipped_BT), 0.0)

    n_B = valid_BT.sum(-1).to(dtype)
    if agg == "token-mean":
        loss = loss_BT.sum() / n_B.sum().clamp(min=1.0)
    else:  # "seq-mean-token-mean": every response weighs the same; rows without valid tokens are skipped
        per_row_B = loss_BT.sum(-1) / n_B.clamp(min=1.0)
        loss = per_row_B.sum() / (n_B > 0).sum().clamp(min=1).to(dtype)
    if not return_stats:
        return loss
    with torch.no_grad():
        n = n_B.sum().clamp(min=1.0)
        clipfrac = (valid_BT & (pg_clipped_BT > pg_unclipped_BT)).sum() / n
        ppo_kl = -log_ratio_BT.sum() / n
    return loss, PPOStats(clipfrac=clipfrac, ppo_kl=ppo_kl)
