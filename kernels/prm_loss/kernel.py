"""Triton kernels of `prm_ce_loss`: per-row masked log-ratio sums (forward) and the broadcast gradient.

Legend: B rows, T positions, BT tile. Grid (T tiles, B) so a micro-batch of a few long rows still fills
the GPU; partial sums go to a [B, n_tiles] buffer summed by torch (deterministic, no atomics).

Why the gradient is not computed in the forward: d loss / d prm_logp[b, t] = beta*(sigmoid(R_b) - o_b)/B
on valid tokens, a per-row constant known only after the whole row is summed. Writing it in the forward
would need a second pass plus a saved [B, T] buffer; the backward below writes it from the mask alone
(1 byte read + 4 written per token), which is already the minimum.
"""

import triton
import triton.language as tl


@triton.jit
def prm_logratio_sum_kernel(
    prm_ptr,  # [B, T] PRM log-probs (any float)
    ref_ptr,  # [B, T] reference log-probs (any float)
    m_ptr,  # [B, T] mask (uint8 0/1)
    part_ptr,  # [B, n_tiles] fp32 partial sums of prm - ref over valid tokens
    T,
    n_tiles,
    stride_prm,
    stride_ref,
    stride_m,
    BT: tl.constexpr,
):
    i_t, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_t = i_t * BT + tl.arange(0, BT)
    m_t = o_t < T
    b_valid = (tl.load(m_ptr + i_b * stride_m + o_t, mask=m_t, other=0) != 0) & m_t
    b_prm = tl.load(prm_ptr + i_b * stride_prm + o_t, mask=m_t, other=0.0).to(tl.float32)
    b_ref = tl.load(ref_ptr + i_b * stride_ref + o_t, mask=m_t, other=0.0).to(tl.float32)
    tl.store(part_ptr + i_b * n_tiles + i_t, tl.sum(tl.where(b_valid, b_prm - b_ref, 0.0), 0))


@triton.jit
def prm_grad_kernel(
    m_ptr,  # [B, T] mask
    coef_ptr,  # [B] fp32 d loss / d prm_logp for a valid token of the row (grad_output folded in)
    grad_ptr,  # [B, T] fp32 gradient
    T,
    stride_m,
    stride_g,
    BT: tl.constexpr,
):
    i_t, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_t = i_t * BT + tl.arange(0, BT)
    m_t = o_t < T
    b_valid = tl.load(m_ptr + i_b * stride_m + o_t, mask=m_t, other=0) != 0
    b_grad = tl.where(b_valid, tl.load(coef_ptr + i_b), 0.0)
    tl.store(grad_ptr + i_b * stride_g + o_t, b_grad, mask=m_t)
