"""Advantages (prime_spec 7): RLOO on the outcome + RLOO-baselined process returns, whitened.

Computed on the whole global batch on every rank (cheap; identical everywhere). Consequence, stated:
`batch_norm` divides by the max |reverse cumsum| over the global batch, where PRIME uses each rank's shard;
this keeps the result independent of the DP degree (a 2-node run equals a 1-node run with the same batch).
"""

from __future__ import annotations

import torch
from primeflow.kernels import rloo_advantages

from ..batch import TrainBatch
from ..config import Config
from ..rollout.metrics import tis_weights
from .results import Advantages
from .step_metrics import DeviceMetrics


def advantage_stage(batch: TrainBatch, config: Config, *, old_logp: torch.Tensor,
                    token_rewards: torch.Tensor | None) -> Advantages:
    """RLOO advantages from the PRM's token rewards and the outcomes (outcome-only RLOO when token_rewards is
    None); TIS-weighted with old_logp vs vLLM's log-probs when rollout.tis_cap > 0."""
    p = config.prime
    outcome_only = token_rewards is None
    rewards = token_rewards
    if outcome_only:
        rewards = torch.zeros(batch.response_mask.shape, dtype=torch.float32, device=batch.device)
    adv = rloo_advantages(rewards, batch.outcome, batch.response_mask, group_size=batch.group_size,
                          gamma_process=p.gamma_process, gamma_outcome=p.gamma_outcome,
                          reward_norm="none" if outcome_only else p.reward_norm, form=p.advantage_form,
                          whiten=p.whiten, process_coef=0.0 if outcome_only else p.process_coef,
                          outcome_coef=p.outcome_coef)
    metrics = DeviceMetrics()
    mask = batch.response_mask
    cap = config.rollout.tis_cap
    if cap > 0:
        # Truncated importance sampling (vLLM sampled from pi_vllm, the trainer's pi_old differs slightly):
        # weight w = min(pi_old / pi_vllm, cap) > 0 scales the token's loss; for PPO-clip that equals
        # scaling its advantage, so the weight is folded into the advantage (0 on padding, which every loss
        # masks anyway).
        w = tis_weights(old_logp, batch.vllm_logp, mask, cap=cap)
        adv = adv * w
        metrics.put("tis_weight_mean", masked_mean(w, mask))
    mean, std = masked_mean_std(adv, mask)
    metrics.put("adv_mean", mean)
    metrics.put("adv_std", std)
    return Advantages(adv, metrics)


def masked_mean(x_BR: torch.Tensor, mask_BR: torch.Tensor) -> torch.Tensor:
    """float64 0-dim mean of x over the mask (NaN for an empty mask), without boolean indexing: x[mask]
    needs the count of selected elements on the host, a device-to-host sync."""
    return torch.where(mask_BR, x_BR.double(), 0.0).sum() / mask_BR.sum()


def masked_mean_std(x_BR: torch.Tensor, mask_BR: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """masked_mean and the unbiased standard deviation over the mask (0 for one element or none)."""
    n = mask_BR.sum()
    mean = masked_mean(x_BR, mask_BR)
    sq = torch.where(mask_BR, (x_BR.double() - mean) ** 2, 0.0).sum()
    std = torch.where(n > 1, (sq / (n - 1).clamp(min=1)).sqrt(), 0.0)
    return mean, std
