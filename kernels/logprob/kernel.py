"""Triton kernels for token log-probs from logits. Launchers live in triton_op.py.

Legend: one program per row (forward) or per (row, vocab tile) (backward); z = logits / T in fp32.
Row offsets are int64 (N*V exceeds 2^31 at RL shapes). Columns past V load as -inf, never 0.
"""

import triton
import triton.language as tl

from .._triton_utils import store_rounded


@triton.jit
def token_stats_fwd_kernel(
    logits_ptr, labels_ptr, m_ptr, ls_ptr, ent_ptr, zt_ptr,
    V, stride_row, inv_temperature,
    BLOCK_V: tl.constexpr, WITH_ENTROPY: tl.constexpr,
):
    """Per row: the max m and ls = log sum exp(z - m) (lse = m + ls, kept apart: a +1e4 offset would round
    m + ls to 1e-3), the entropy of softmax(z) (optional) and z[label] (0 when label == -1, i.e. the label
    lives on another vocab shard). One pass over the row with an online max; the entropy is
    accumulated relative to the running max (w = sum e^(z-m) (z-m)) so a +1e4 offset cannot cancel."""
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    cols = tl.arange(0, BLOCK_V)
    m = tl.full((), float("-inf"), tl.float32)
    s = tl.zeros((), tl.float32)
    w = tl.zeros((), tl.float32)
    for start in range(0, V, BLOCK_V):
        offs = start + cols
        x_V = tl.load(row_ptr + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
        z_V = x_V * inv_temperature
        m_new = tl.maximum(m, tl.max(z_V, axis=0))
        # While every logit so far is -inf, shift by 0: exp(-inf - 0) = 0 instead of exp(nan).
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        e_V = tl.exp(z_V - m_safe)
        scale = tl.exp(m - m_safe)
        if WITH_ENTROPY:
            d_V = tl.where(e_V > 0, z_V - m_safe, 0.0)
            # Re-centre the old sum on the new max: e^(z-m_old)(z-m_old) -> scale*(... + (m_old-m_new)).
            w = tl.where(s > 0, scale * (w + s * (m - m_safe)), 0.0) + tl.sum(e_V * d_V, axis=0)
        s = s * scale + tl.sum(e_V, axis=0)
        m = m_new
    log_s = tl.log(s)
    tl.store(m_ptr + row, m)
    tl.store(ls_ptr + row, log_s)
    if WITH_ENTROPY:
        tl.store(ent_ptr + row, log_s - w / s)
    label = tl.load(labels_ptr + row)
    has_label = (label >= 0) & (label < V)
    x_t = tl.load(row_ptr + tl.where(has_label, label, 0), mask=has_label, other=0.0).to(tl.float32)
    tl.store(zt_ptr + row, tl.where(has_label, x_t * inv_temperature, 0.0))


@triton.jit
def token_logprobs_bwd_kernel(
    logits_ptr, labels_ptr, m_ptr, ls_ptr, ent_ptr, grad_logp_ptr, grad_ent_ptr, grad_logits_ptr,
    V, stride_row, stride_grad_row, inv_temperature,
    BLOCK_V: tl.constexpr, WITH_ENTROPY: tl.constexpr,
):
    """dlogits = (1/T) * (g_logp * (onehot - p) - g_ent * p * (log p + H)), log p = (z - m) - ls, in one
    pass from the saved (global, with TP) m, ls and entropy. Written in the logits' dtype."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    valid = offs < V
    x_V = tl.load(logits_ptr + row * stride_row + offs, mask=valid, other=float("-inf")).to(tl.float32)
    z_V = x_V * inv_temperature
    m = tl.load(m_ptr + row)
    ls = tl.load(ls_ptr + row)
    g = tl.load(grad_logp_ptr + row)
    label = tl.load(labels_ptr + row)
    log_p_V = (z_V - m) - ls
    p_V = tl.exp(log_p_V)
    dz_V = tl.where(offs == label, g, 0.0) - g * p_V
    if WITH_ENTROPY:
        g_ent = tl.load(grad_ent_ptr + row)
        ent = tl.load(ent_ptr + row)
        # -inf columns: p = 0 and log p = -inf; their term is exactly 0, not 0 * inf.
        dz_V -= g_ent * tl.where(p_V > 0, p_V * (log_p_V + ent), 0.0)
    store_rounded(grad_logits_ptr + row * stride_grad_row + offs, dz_V * inv_temperature, valid)
