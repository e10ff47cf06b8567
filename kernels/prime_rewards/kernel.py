"""ONE Triton launch scoring up to three models (policy, PRM, reference) and forming the implicit reward.

Legend: a program owns BLOCK_N rows and streams the whole vocabulary of each model in turn; a model is
absent (KIND 0), given as logits [N, V] (KIND 1, tiles loaded) or as (hidden [N, H], weight [V, H])
(KIND 2, logits tiles computed on chip with tl.dot, never stored). Per model it keeps fp32 (z_label, max, log
sum-exp below the max), then writes the three log-probs and reward = beta*((z_prm - z_ref) - (lse_prm -
lse_ref)) from those fp32 pieces (lse never rounded as one number), 0 where mask is 0. No splits, no
atomics: a row's results never depend on the other rows.
"""

import triton
import triton.language as tl

from ..linear_logprob.kernel import _logits_tile


@triton.jit
def _model_stats(a_ptr, w_ptr, rows, row_ok, labels, V, H, stride_a, stride_w,
                 KIND: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                 DOT_FP32: tl.constexpr):
    """(max, log sum exp(z - max), z_label) fp32 [BLOCK_N] of one model over the full vocabulary."""
    m = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK_N,), tl.float32)
    zt = tl.zeros((BLOCK_N,), tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < V
        if KIND == 2:
            z_NV = _logits_tile(a_ptr, w_ptr, rows, cols, row_ok, col_ok, H, stride_a, stride_w, 1.0,
                                BLOCK_N, BLOCK_V, BLOCK_H, DOT_FP32)
        else:
            ptrs = a_ptr + rows.to(tl.int64)[:, None] * stride_a + cols[None, :]
            z_NV = tl.load(ptrs, mask=row_ok[:, None] & col_ok[None, :], other=float("-inf")).to(tl.float32)
        zt += tl.sum(tl.where(cols[None, :] == labels[:, None], z_NV, 0.0), axis=1)
        m_new = tl.maximum(m, tl.max(z_NV, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(z_NV - m_safe[:, None]), axis=1)
        m = m_new
    return m, tl.log(s), zt


@triton.jit
def prime_rewards_kernel(
    labels_ptr, mask_ptr, logp_ptr, reward_ptr,
    pol_a, pol_w, pol_V, pol_H, pol_sa, pol_sw,
    prm_a, prm_w, prm_V, prm_H, prm_sa, prm_sw,
    ref_a, ref_w, ref_V, ref_H, ref_sa, ref_sw,
    N, beta,
    POL_KIND: tl.constexpr, PRM_KIND: tl.constexpr, REF_KIND: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    POL_DOT_FP32: tl.constexpr, PRM_DOT_FP32: tl.constexpr, REF_DOT_FP32: tl.constexpr,
):
    """logp_ptr: fp32 [3, N] (policy, prm, ref); reward_ptr: fp32 [N]."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    labels = tl.load(labels_ptr + rows, mask=row_ok, other=0)
    if POL_KIND != 0:
        m_pol, ls_pol, zt_pol = _model_stats(pol_a, pol_w, rows, row_ok, labels, pol_V, pol_H, pol_sa, pol_sw,
                                             POL_KIND, BLOCK_N, BLOCK_V, BLOCK_H, POL_DOT_FP32)
        tl.store(logp_ptr + rows, (zt_pol - m_pol) - ls_pol, mask=row_ok)
    m_prm, ls_prm, zt_prm = _model_stats(prm_a, prm_w, rows, row_ok, labels, prm_V, prm_H, prm_sa, prm_sw,
                                         PRM_KIND, BLOCK_N, BLOCK_V, BLOCK_H, PRM_DOT_FP32)
    m_ref, ls_ref, zt_ref = _model_stats(ref_a, ref_w, rows, row_ok, labels, ref_V, ref_H, ref_sa, ref_sw,
                                         REF_KIND, BLOCK_N, BLOCK_V, BLOCK_H, REF_DOT_FP32)
    tl.store(logp_ptr + N + rows, (zt_prm - m_prm) - ls_prm, mask=row_ok)
    tl.store(logp_ptr + 2 * N + rows, (zt_ref - m_ref) - ls_ref, mask=row_ok)
    # (z_prm - z_ref) - (lse_prm - lse_ref), regrouped as
    # ((z_prm - m_prm) - (z_ref - m_ref)) - (ls_prm - ls_ref):
    # z - m is exact when z is near the max (Sterbenz), even under a +1e4 offset on one model only, where
    # z_prm - z_ref itself would already round to 1e-3.
    reward = beta * (((zt_prm - m_prm) - (zt_ref - m_ref)) - (ls_prm - ls_ref))
    if HAS_MASK:
        keep = tl.load(mask_ptr + rows, mask=row_ok, other=0)
        reward = tl.where(keep != 0, reward, 0.0)
    tl.store(reward_ptr + rows, reward, mask=row_ok)
