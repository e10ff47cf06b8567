"""Reference PRIME advantage (prime_spec sections 3.3, 7.1-7.4), written plainly in fp32 PyTorch.

Legend: B response rows (G prompt groups of K contiguous rows), T response positions.
"""

from __future__ import annotations

import torch

from .._rl_validate import validate_rloo_args

BATCH_NORM_EPS = 1e-6  # prime_spec 3.3: r / (max |reverse cumsum| + 1e-6)
WHITEN_EPS = 1e-8  # prime_spec 7.4: (x - mean) / sqrt(unbiased var + 1e-8)


def rloo_advantages(
    token_rewards: torch.Tensor,
    outcome: torch.Tensor,
    mask: torch.Tensor,
    *,
    group_size: int,
    gamma_process: float = 1.0,
    gamma_outcome: float = 1.0,
    reward_norm: str = "batch_norm",
    form: str = "prime",
    whiten: bool = True,
    process_coef: float = 1.0,
    outcome_coef: float = 1.0,
) -> torch.Tensor:
    """PRIME advantages, fp32 [B, T]. Same contract as `primeflow.kernels.rloo_advantages`."""
    valid_BT = validate_rloo_args(
        token_rewards,
        outcome,
        mask,
        group_size=group_size,
        gamma_process=gamma_process,
        gamma_outcome=gamma_outcome,
        reward_norm=reward_norm,
        form=form,
        whiten=whiten,
        process_coef=process_coef,
        outcome_coef=outcome_coef,
    )
    K = group_size
    B, T = token_rewards.shape
    # Padding positions hold no data: whatever they contain (0, garbage, NaN) is ignored.
    r_BT = torch.where(valid_BT, token_rewards.float(), 0.0)
    o_B = outcome.float()
    n_B = valid_BT.sum(-1).float()

    # 3.3 batch_norm: one scalar for the whole batch, the largest |sum_{s>=t} r_s|.
    if reward_norm == "batch_norm":
        revcum_BT = r_BT.flip(-1).cumsum(-1).flip(-1)
        r_BT = r_BT / (revcum_BT.abs().max() + BATCH_NORM_EPS)

    # 7.3 / 7.2 leave-one-out transform of the process rewards, per group of K contiguous rows.
    mean_B = r_BT.sum(-1) / n_B
    group_total_B = mean_B.view(-1, K).sum(-1).repeat_interleave(K)
    if form == "prime":
        proc_BT = r_BT * (K / (K - 1)) - (group_total_B / (K - 1))[:, None]
    else:  # "paper", Eq. 5: r_t minus the mean of the other responses' per-token mean rewards
        proc_BT = r_BT - ((group_total_B - mean_B) / (K - 1))[:, None]
    proc_BT = torch.where(valid_BT, proc_BT, 0.0)

    # 7.1 the outcome sits on the last valid token; the same masked transform there is plain RLOO.
    outcome_loo_B = o_B * (K / (K - 1)) - o_B.view(-1, K).sum(-1).repeat_interleave(K) / (K - 1)
    outc_BT = torch.zeros_like(r_BT)
    outc_BT[torch.arange(B, device=r_BT.device), n_B.long() - 1] = outcome_loo_B

    # 7.3 / 7.4 discounted reverse cumsum per source, then the weighted sum.
    returns_BT = process_coef * discounted_returns(
        proc_BT, gamma_process
    ) + outcome_coef * discounted_returns(outc_BT, gamma_outcome)
    if not whiten:
        return returns_BT
    return masked_whiten(returns_BT, valid_BT)


def discounted_returns(x_BT: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = x_t + gamma * G_{t+1}, G_T = 0."""
    if gamma == 1.0:
        return x_BT.flip(-1).cumsum(-1).flip(-1)
    out_BT = torch.empty_like(x_BT)
    carry_B = torch.zeros_like(x_BT[:, 0])
    for t in reversed(range(x_BT.shape[1])):
        carry_B = x_BT[:, t] + gamma * carry_B
        out_BT[:, t] = carry_B
    return out_BT


def masked_whiten(x_BT: torch.Tensor, valid_BT: torch.Tensor) -> torch.Tensor:
    """(x - mean) / sqrt(var + 1e-8) with mean and Bessel-corrected var over the valid tokens of the batch.

    Applied to every position, padding included (as PRIME does); the losses mask padding out.
    """
    n = valid_BT.sum()
    mean = torch.where(valid_BT, x_BT, 0.0).sum() / n
    var = torch.where(valid_BT, (x_BT - mean) ** 2, 0.0).sum() / (n - 1)
    return (x_BT - mean) * torch.rsqrt(var + WHITEN_EPS)
