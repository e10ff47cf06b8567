"""Public `ppo_clip_loss`: PPO clipped surrogate with the gradient computed in the forward pass.

Legend: B response rows, T positions.

Both paths (Triton on CUDA / under TRITON_INTERPRET=1, torch on CPU) compute, in one pass over the inputs,
the loss, the clipped-token count, sum(old - logp) and d(loss)/d(logp) already divided by the aggregation's
normalizer; backward only multiplies that saved fp32 [B, T] buffer by grad_output. Compared with autograd
through the reference (about eight saved [B, T] intermediates and as many backward kernels), this keeps one
buffer and reads the inputs once.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .._backend import Backend, triton_or_torch
from .._library import absent, qualified
from .._rl_validate import validate_ppo_args
from .ref import PPOStats

# Positions per program: a whole 2k-token row in one tile; grid (T tiles, B) keeps short micro-batches wide.
MAX_BLOCK_T = 2048


def ppo_clip_loss_backend(logp: torch.Tensor) -> Backend:
    """ "triton" or "torch": the implementation `ppo_clip_loss` runs for tensors on this device."""
    return triton_or_torch(logp)


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
    """PPO-clip policy loss (prime_spec 8), a 0-d fp32 tensor differentiable w.r.t. `logp` only.

    logp, old_logp, advantages: [B, T] any float dtype; mask: [B, T] bool or 0/1 (padding ignored).
    Per valid token: max(-A*r, -A*clip(r, 1-clip, 1+clip)), r = exp(logp - old_logp).
    agg="token-mean": mean over all valid tokens of the batch (length-weighted, verl's default);
    agg="seq-mean-token-mean": mean over responses of each response's token-mean (PRIME's effective
    aggregation); responses without valid tokens are skipped, and an all-padding batch gives 0.
    return_stats=True also returns PPOStats(clipfrac, ppo_kl), detached token-means (`pg_clipfrac`).
    """
    valid_BT = validate_ppo_args(logp, old_logp, advantages, mask, clip=clip, agg=agg)
    w_B, n_valid = _row_weights(valid_BT, agg)
    use_triton = ppo_clip_loss_backend(logp) is Backend.TRITON
    loss, clip_count, kl_sum = _PPOClipLoss.apply(
        logp, old_logp, advantages, valid_BT, w_B, float(clip), use_triton
    )
    if not return_stats:
        return loss
    n = n_valid.clamp(min=1.0)
    return loss, PPOStats(clipfrac=clip_count / n, ppo_kl=kl_sum / n)


def _row_weights(valid_BT: torch.Tensor, agg: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight of one valid token of each row under `agg` (fp32 [B]) and the batch's valid count."""
    n_B = valid_BT.sum(-1, dtype=torch.float32)
    n_valid = n_B.sum()
    if agg == "token-mean":
        # ones / n rather than (1 / n).expand(B).contiguous(): the same values, and a copy of an expanded
        # tensor has no fake-CUDA kernel in a CPU-only torch (tests/kernels/test_custom_ops.py traces this)
        w_B = torch.ones_like(n_B) / n_valid.clamp(min=1.0)
    else:
        n_rows = (n_B > 0).sum(dtype=torch.float32).clamp(min=1.0)
        w_B = 1.0 / (n_B.clamp(min=1.0) * n_rows)
    return w_B, n_valid


class _PPOClipLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logp, old_logp, advantages, valid_BT, w_B, clip, use_triton):
        need_grad = ctx.needs_input_grad[0]
        sums_3, grad_BT = ppo_clip_forward(logp, old_logp, advantages, valid_BT, w_B, clip, need_grad,
                                           use_triton)
        loss, clip_count, kl_sum = sums_3.unbind()
        ctx.save_for_backward(grad_BT)
        ctx.logp_dtype = logp.dtype
        ctx.mark_non_differentiable(clip_count, kl_sum)
        return loss, clip_count, kl_sum

    @staticmethod
    @once_differentiable  # the saved gradient is a constant: no double backward
    def backward(ctx, grad_loss, _grad_clip_count, _grad_kl_sum):
        (grad_BT,) = ctx.saved_tensors
        grad_logp = (grad_BT * grad_loss).to(ctx.logp_dtype)  # out of place: backward may run twice
        return grad_logp, None, None, None, None, None, None


@torch.library.custom_op(qualified("ppo_clip_forward"), mutates_args=())
def ppo_clip_forward(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, valid_BT: torch.Tensor,
                     w_B: torch.Tensor, clip: float, need_grad: bool, use_triton: bool
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp32 [3] = (loss, clipped-token count, sum(old - logp)), d(loss)/d(logp) fp32 [B, T], or [0] when
    not need_grad): one pass over the inputs, Triton or torch."""
    fwd = _forward_triton if use_triton else _forward_torch
    loss, clip_count, kl_sum, grad_BT = fwd(logp, old_logp, advantages, valid_BT, w_B, clip, need_grad)
    return torch.stack((loss, clip_count, kl_sum)), grad_BT if need_grad else absent(logp)


@ppo_clip_forward.register_fake
def _(logp, old_logp, advantages, valid_BT, w_B, clip, need_grad, use_triton):
    grad_BT = logp.new_empty(logp.shape, dtype=torch.float32) if need_grad else absent(logp)
    return logp.new_empty(3, dtype=torch.float32), grad_BT


def _forward_torch(logp, old_logp, advantages, valid_BT, w_B, clip, need_grad):
    with torch.no_grad():
        log_ratio_BT = torch.where(valid_BT, logp.float() - old_logp.float(), 0.0)
        adv_BT = torch.where(valid_BT, advantages.float(), 0.0)
        ratio_BT = torch.exp(log_ratio_BT)
        pg1_BT = -adv_BT * ratio_BT
        pg2_BT = -adv_BT * torch.clamp(ratio_BT, 1.0 - clip, 1.0 + clip)
        loss_BT = torch.where(valid_BT, torch.maximum(pg1_BT, pg2_BT), 0.0)
        loss = (loss_BT.sum(-1) * w_B).sum()
        clip_count = (valid_BT & (pg2_BT > pg1_BT)).sum(dtype=torch.float32)
        kl_sum = -log_ratio_BT.sum()
        grad_BT = None
        if need_grad:
            grad_BT = torch.where(valid_BT & ~(pg2_BT > pg1_BT), pg1_BT * w_B[:, None], 0.0)
    return loss, clip_count, kl_sum, grad_BT


def _forward_triton(logp, old_logp, advantages, valid_BT, w_B, clip, need_grad):
    import triton

    from .kernel import ppo_clip_fwd_kernel

    B, T = logp.shape
    lp, old, adv = logp.contiguous(), old_logp.contiguous(), advantages.contiguous()
    m = valid_BT.contiguous().view(torch.uint8)
    BT = min(MAX_BLOCK_T, max(16, triton.next_power_of_2(T)))
    n_tiles = triton.cdiv(T, BT)
    part = torch.empty(B, n_tiles, 3, dtype=torch.float32, device=logp.device)
    grad_BT = torch.empty(B, T, dtype=torch.float32, device=logp.device) if need_grad else part
    ppo_clip_fwd_kernel[(n_tiles, B)](
        lp,
        old,
        adv,
        m,
        w_B,
        grad_BT,
        part,
        T,
        n_tiles,
        lp.stride(0),
        old.stride(0),
        adv.stride(0),
        m.stride(0),
        grad_BT.stride(0) if need_grad else 0,
        1.0 - clip,
        1.0 + clip,
        BT=BT,
        WRITE_GRAD=need_grad,
    )
    sums = part.sum(dim=(0, 1))
    return sums[0], sums[1], sums[2], grad_BT if need_grad else None
