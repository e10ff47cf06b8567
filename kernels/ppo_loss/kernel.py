"""Triton kernel of `ppo_clip_loss`: loss partial sums and d(loss)/d(logp) in one pass.

Legend: B rows, T positions, BT tile. Grid (T tiles, B): a micro-batch may hold only a few long rows, so a
row is split over programs; partial sums go to a [B, n_tiles] buffer summed by torch (deterministic, no
atomics). The aggregation (token-mean or seq-mean-token-mean) is a per-row weight w_B for each valid token,
precomputed from the mask, so the gradient is final here and backward only scales it by grad_output.

d/dlogp of max(-A*r, -A*clip(r)) is -A*r where the unclipped term is the max and 0 where the clipped one
is strictly larger (then r lies outside the clip range, where clip() has zero slope). At ties both terms
have slope -A*r (torch splits the tie gradient in halves that add up to the same value).
"""

import triton
import triton.language as tl


@triton.jit
def ppo_clip_fwd_kernel(
    logp_ptr,  # [B, T] any float
    old_ptr,  # [B, T] any float
    adv_ptr,  # [B, T] any float
    m_ptr,  # [B, T] mask (uint8 0/1)
    w_ptr,  # [B] fp32 weight of one valid token of the row
    grad_ptr,  # [B, T] fp32 d loss / d logp (written if WRITE_GRAD)
    part_ptr,  # [B, n_tiles, 3] fp32: weighted loss, clipped count, sum(old - logp)
    T,
    n_tiles,
    stride_lp,
    stride_old,
    stride_adv,
    stride_m,
    stride_g,
    clip_lo,
    clip_hi,
    BT: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
):
    i_t, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_t = i_t * BT + tl.arange(0, BT)
    m_t = o_t < T
    b_valid = (tl.load(m_ptr + i_b * stride_m + o_t, mask=m_t, other=0) != 0) & m_t
    b_lp = tl.load(logp_ptr + i_b * stride_lp + o_t, mask=m_t, other=0.0).to(tl.float32)
    b_old = tl.load(old_ptr + i_b * stride_old + o_t, mask=m_t, other=0.0).to(tl.float32)
    b_adv = tl.load(adv_ptr + i_b * stride_adv + o_t, mask=m_t, other=0.0).to(tl.float32)
    b_w = tl.load(w_ptr + i_b)

    b_logratio = tl.where(b_valid, b_lp - b_old, 0.0)
    b_adv = tl.where(b_valid, b_adv, 0.0)
    b_ratio = tl.exp(b_logratio)
    # GPU min/max drop NaN by default; torch's clamp and maximum keep it, and so must we.
    b_clamped = tl.minimum(
        tl.maximum(b_ratio, clip_lo, propagate_nan=tl.PropagateNan.ALL),
        clip_hi,
        propagate_nan=tl.PropagateNan.ALL,
    )
    b_pg1 = -b_adv * b_ratio
    b_pg2 = -b_adv * b_clamped
    b_loss = tl.where(b_valid, tl.maximum(b_pg1, b_pg2, propagate_nan=tl.PropagateNan.ALL), 0.0)
    b_clipped = b_valid & (b_pg2 > b_pg1)

    p_part = part_ptr + (i_b * n_tiles + i_t) * 3
    tl.store(p_part, tl.sum(b_loss, 0) * b_w)
    tl.store(p_part + 1, tl.sum(b_clipped.to(tl.float32), 0))
    tl.store(p_part + 2, -tl.sum(b_logratio, 0))
    if WRITE_GRAD:
        b_grad = tl.where(b_valid & (b_pg2 <= b_pg1), b_pg1 * b_w, 0.0)
        # NaN compares False above; keep it in the gradient like autograd does.
        b_grad = tl.where(b_valid & (b_pg1 != b_pg1), b_pg1, b_grad)
        tl.store(grad_ptr + i_b * stride_g + o_t, b_grad, mask=m_t)
