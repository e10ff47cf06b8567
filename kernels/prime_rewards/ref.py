"""Reference `prime_token_rewards`: materialise each model's fp32 logits, then (z_label, lse) in fp32."""

from __future__ import annotations

import torch

from .types import ModelInput, PrimeLogprobs, check_prime_inputs


def _pieces(model: ModelInput, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits_NV = model.float() if isinstance(model, torch.Tensor) else model[0].float() @ model[1].float().T
    return logits_NV.gather(1, labels[:, None]).squeeze(1), torch.logsumexp(logits_NV, dim=1)


@torch.no_grad()
def prime_token_rewards(labels: torch.Tensor, *, prm: ModelInput, ref: ModelInput,
                        policy: ModelInput | None = None, beta: float,
                        mask: torch.Tensor | None = None,
                        cu_seqlens: torch.Tensor | None = None) -> PrimeLogprobs:
    """Per-token log-probs of policy (optional), PRM and reference, and the implicit reward
    beta*((z_prm - z_ref) - (lse_prm - lse_ref)), 0 where mask is 0. Scoring only: no gradients.
    With cu_seqlens [S+1]: per-sequence sum of the rewards (fp32) and count of mask != 0 tokens (int64),
    one plain slice per sequence."""
    check_prime_inputs(labels, prm, ref, policy, beta, mask, cu_seqlens)
    zt_prm, lse_prm = _pieces(prm, labels)
    zt_ref, lse_ref = _pieces(ref, labels)
    reward = beta * ((zt_prm - zt_ref) - (lse_prm - lse_ref))
    if mask is not None:
        reward = torch.where(mask != 0, reward, torch.zeros_like(reward))
    policy_logp = None
    if policy is not None:
        zt_pol, lse_pol = _pieces(policy, labels)
        policy_logp = zt_pol - lse_pol
    seq_sum = seq_cnt = None
    if cu_seqlens is not None:
        valid = mask != 0 if mask is not None else torch.ones_like(labels, dtype=torch.bool)
        spans = list(zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist(), strict=True))
        seq_sum = reward.new_tensor([reward[a:b].sum().item() for a, b in spans])
        seq_cnt = torch.tensor([int(valid[a:b].sum()) for a, b in spans], dtype=torch.int64, device=labels.device)
    return PrimeLogprobs(policy_logp, zt_prm - lse_prm, zt_ref - lse_ref, reward, seq_sum, seq_cnt)
