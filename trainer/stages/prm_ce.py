"""Class-balanced PRM CE (prm.ce_weighting=class_balanced), an opt-in variant of prime_spec 4.1's mean CE.

Why: at initialisation every R_b = 0, so a response's CE gradient is (sigmoid(R_b) - o_b) dR_b = (0.5 - o_b)
dR_b. A token that correct and wrong responses share (a correct prefix before the first wrong step) then
gets a net push of 0.5 (n_wrong - n_correct) / n: at 30 % accuracy every shared token is pushed down,
which lowers the implicit reward of the responses made only of such tokens: the correct ones. Weighting the
two classes to half the loss each cancels that push exactly, leaving the tokens that tell them apart.

loss = 0.5 sum_b o_b (-log sigmoid R_b) / sum_b o_b + 0.5 sum_b (1 - o_b) (-log sigmoid(-R_b)) / sum_b (1 - o_b)

over the PRM mini-batch (soft labels o_b in [0, 1] split between the halves); a class absent from the
mini-batch leaves the other its whole weight (then this is the mean CE of that class). The weights are
device tensors: nothing is read back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_weights(outcome_M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight of each positive term, weight of each negative term), fp32 0-d, for a mini-batch's outcomes."""
    o_M = outcome_M.detach().float()
    pos, neg = o_M.sum(), (1.0 - o_M).sum()
    half = torch.where((pos > 0) & (neg > 0), 0.5, 1.0)
    return (torch.where(pos > 0, half / pos.clamp_min(1e-30), 0.0),
            torch.where(neg > 0, half / neg.clamp_min(1e-30), 0.0))


def balanced_ce_sum(reward_b: torch.Tensor, outcome_b: torch.Tensor,
                    weights: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """This micro-batch's share of the class-balanced loss: sum_b of its weighted terms (autograd in R_b)."""
    o_b = outcome_b.detach().float()
    pos_w, neg_w = weights
    return -(pos_w * o_b * F.logsigmoid(reward_b) + neg_w * (1.0 - o_b) * F.logsigmoid(-reward_b)).sum()
