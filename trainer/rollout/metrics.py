"""Train/rollout log-prob mismatch and truncated importance sampling (TIS).

vLLM samples with its own kernels (and, on GPU, often in bf16) while the trainer recomputes the same
tokens' log-probs with Megatron; the two never agree exactly, so every mature RL framework logs the gap
and can correct the policy gradient for it (frameworks_landscape.md: verl rollout_corr, NeMo-RL, slime
`--use-tis`, OpenRLHF, TRL). TIS (Yao et al., 2025, "Your efficient RL framework secretly brings you
off-policy RL training") multiplies each token's policy-gradient term by
min(pi_trainer_old(token) / pi_vllm(token), cap): the samples came from vLLM's distribution, the loss is
written for the trainer's, and the cap bounds the variance.

All inputs are [B, T-1] in the `sequence_logprobs` column layout (RolloutBatch.padded gives vllm_logp and
response_mask in that layout).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist


def _check(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, names: tuple[str, str]) -> torch.Tensor:
    for name, t in ((names[0], a), (names[1], b)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got "
                             f"{type(t).__name__ if not isinstance(t, torch.Tensor) else t.dtype}")
    if a.shape != b.shape or mask.shape != a.shape:
        raise ValueError(f"{names[0]} {list(a.shape)}, {names[1]} {list(b.shape)} and mask {list(mask.shape)} "
                         "must have the same shape [B, T-1]")
    if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask must be bool or contain only 0 and 1")
    return mask.to(torch.bool)


def logprob_mismatch(vllm_logp: torch.Tensor, trainer_logp: torch.Tensor, mask: torch.Tensor, *,
                     group: dist.ProcessGroup | None = None) -> tuple[float, float]:
    """(mean, max) of |vllm_logp - trainer_logp| over the tokens where mask is 1 (token mean, fp64 sum).

    With `group` (e.g. the DP group) the sum, count and max are reduced over it, so every rank gets the
    global figures (collective: every rank of the group must call). No masked token (anywhere in the
    group) gives (nan, nan): a metric that silently reads 0 would hide an empty batch.
    """
    mean, peak = logprob_mismatch_on_device(vllm_logp, trainer_logp, mask, group=group)
    return tuple(torch.stack([mean, peak]).tolist())


def logprob_mismatch_on_device(vllm_logp: torch.Tensor, trainer_logp: torch.Tensor, mask: torch.Tensor, *,
                               group: dist.ProcessGroup | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """logprob_mismatch as float64 0-dim tensors on vllm_logp's device, nothing read to the host (the
    training loop reads its metrics once per step, trainer/stages/step_metrics.py)."""
    m = _check(vllm_logp, trainer_logp, mask, ("vllm_logp", "trainer_logp"))
    diff = (vllm_logp.detach().double() - trainer_logp.detach().double().to(vllm_logp.device)).abs()
    m = m.to(diff.device)
    stats = torch.stack([torch.where(m, diff, 0.0).sum(), m.sum().double()])
    peak = torch.where(m, diff, -math.inf).amax().reshape(1)
    if group is not None and dist.get_world_size(group) > 1:
        device = vllm_logp.device if dist.get_backend(group) == "nccl" else torch.device("cpu")
        stats, peak = stats.to(device), peak.to(device)
        dist.all_reduce(stats, group=group)
        dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=group)
    total, count = stats[0], stats[1]
    empty = count == 0
    return (torch.where(empty, math.nan, total / count.clamp(min=1)).to(vllm_logp.device),
            torch.where(empty, math.nan, peak[0]).to(vllm_logp.device))


def tis_weights(trainer_old_logp: torch.Tensor, vllm_logp: torch.Tensor, mask: torch.Tensor, *,
                cap: float = 2.0) -> torch.Tensor:
    """Truncated importance weights min(exp(trainer_old_logp - vllm_logp), cap), fp32 [B, T-1], detached.

    Positions where mask is 0 get weight 0 (so `w * per_token_loss` is already masked). `cap` must be
    > 0 (typical values 1.5..5). The ratio is formed in log space and capped before exponentiating, so a
    token vLLM found far less likely than the trainer never overflows.
    """
    if not (isinstance(cap, (int, float)) and cap > 0 and math.isfinite(cap)):
        raise ValueError(f"cap must be a finite number > 0, got {cap!r}")
    m = _check(trainer_old_logp, vllm_logp, mask, ("trainer_old_logp", "vllm_logp"))
    log_ratio = trainer_old_logp.detach().float() - vllm_logp.detach().float().to(trainer_old_logp.device)
    w = torch.exp(torch.clamp(log_ratio, max=math.log(cap)))
    return torch.where(m.to(w.device), w, torch.zeros_like(w))
