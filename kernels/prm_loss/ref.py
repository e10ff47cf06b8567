"""Reference implicit-PRM cross-entropy loss (prime_spec 4.1), plain fp32 PyTorch with autograd.

Legend: B response rows, T positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._rl_validate import validate_prm_ce_args


def prm_ce_loss(
    prm_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    outcome: torch.Tensor,
    *,
    beta: float,
) -> torch.Tensor:
    """Same contract as `primeflow.kernels.prm_ce_loss`; gradients flow to `prm_logp` only.

    Math in fp32 (fp64 when prm_logp is fp64, so torch.autograd.gradcheck can run on it).
    """
    valid_BT = validate_prm_ce_args(prm_logp, ref_logp, mask, outcome, beta=beta)
    dtype = torch.promote_types(prm_logp.dtype, torch.float32)
    # Padding is masked on the inputs, so garbage there reaches neither the loss nor the gradient.
    log_ratio_BT = torch.where(valid_BT, prm_logp.to(dtype) - ref_logp.detach().to(dtype), 0.0)
    implicit_reward_B = beta * log_ratio_BT.sum(-1)
    o_B = outcome.detach().to(dtype)
    # BCE with logits through logsigmoid: finite for any |R| (log(sigmoid(R)) underflows past |R| ~ 100).
    loss_B = -(o_B * F.logsigmoid(implicit_reward_B) + (1.0 - o_B) * F.logsigmoid(-implicit_reward_B))
    return loss_B.mean()
