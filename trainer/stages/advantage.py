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
    metrics = {}
    cap = config.rollout.tis_cap
    if cap > 0:
        # Truncated importance sampling (vLLM sampled from pi_vllm, the trainer's pi_old differs slightly):
        # weight w = min(pi_old / pi_vllm, cap) > 0 scales the token's loss; for PPO-clip that equals
        # scaling its advantage, so the weight is folded into the advantage (0 on padding, which every loss
        # masks anyway).
        w = tis_weights(old_logp, batch.vllm_logp, batch.response_mask, cap=cap)
        adv = adv * w
        metrics["tis_weight_mean"] = float(w[batch.response_mask].mean())
    valid = adv[batch.response_mask]
    metrics["adv_mean"] = float(valid.mean())
    metrics["adv_std"] = float(valid.std()) if valid.numel() > 1 else 0.0
    return Advantages(adv, metrics)
