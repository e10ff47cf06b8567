"""`prm_pairwise_accuracy`: the PRM's within-group ranking accuracy (prime_spec 4.5 `dpo_acc`).

A metric on [G, K, K] pair matrices, plain torch on any device (no kernel: it is O(B*K) work).
"""

from __future__ import annotations

import torch

from .._rl_validate import check_bt, check_group_size, check_mask, check_outcome, check_same_device


def prm_pairwise_accuracy(
    token_rewards: torch.Tensor, mask: torch.Tensor, outcome: torch.Tensor, *, group_size: int
) -> torch.Tensor:
    """Pairwise accuracy of summed implicit rewards against outcome scores, a 0-d fp32 tensor.

    token_rewards: [B, T] float (per-token implicit rewards; padding ignored), mask: [B, T] bool or 0/1,
    outcome: [B] scores, rows [g*K, (g+1)*K) = one prompt group (K = group_size >= 2).
    Per group, over the pairs (i, j) whose outcomes differ: sum of |o_i - o_j| over pairs where
    sign(s_i - s_j) == sign(o_i - o_j) (s = summed reward), divided by the sum of |o_i - o_j| over all of
    them. A group whose outcomes are all equal counts 0.5. The result is the mean over groups.
    A tie in summed rewards has sign 0, so it never counts as correct (spec 4.5 "the same sign"; PRIME's
    code compares (s_i - s_j > 0) == (o_i - o_j > 0), which credits a tie when o_i < o_j for i < j).
    A NaN reward or outcome in a group makes that group, and the mean, NaN.
    """
    check_bt("token_rewards", token_rewards)
    B, T = token_rewards.shape
    check_outcome("outcome", outcome, B, unit_interval=False)
    check_same_device(token_rewards, mask=mask, outcome=outcome)
    check_group_size(group_size, B)
    valid_BT = check_mask("mask", mask, (B, T))
    K = group_size
    score_GK = torch.where(valid_BT, token_rewards.float(), 0.0).sum(-1).view(-1, K)
    acc_GK = outcome.float().view(-1, K)
    d_score_GKK = score_GK[:, :, None] - score_GK[:, None, :]
    d_acc_GKK = acc_GK[:, :, None] - acc_GK[:, None, :]
    upper_KK = torch.ones(K, K, dtype=torch.bool, device=score_GK.device).triu(diagonal=1)  # each pair once
    weight_GKK = torch.where(upper_KK, d_acc_GKK.abs(), 0.0)
    agree_GKK = torch.sign(d_score_GKK) == torch.sign(d_acc_GKK)
    total_G = weight_GKK.sum(dim=(1, 2))
    correct_G = torch.where(agree_GKK, weight_GKK, 0.0).sum(dim=(1, 2))
    group_acc_G = torch.where(
        total_G > 0, correct_G / total_G.clamp(min=torch.finfo(torch.float32).tiny), 0.5
    )
    has_nan_G = score_GK.isnan().any(-1) | acc_GK.isnan().any(-1)
    group_acc_G = torch.where(has_nan_G, float("nan"), group_acc_G)
    return group_acc_G.mean()
