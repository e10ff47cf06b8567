"""Triton kernels for fused lm_head + log-prob. Launchers: triton_op.py.

Legend: rows n (tokens, BLOCK_N per program), vocab columns v (BLOCK_V per tile), hidden k (BLOCK_H per
dot step). A logits tile z[BLOCK_N, BLOCK_V] = hidden[rows] @ weight[cols].T / T lives only in registers.
DOT_FP32 casts both operands to fp32 before an IEEE-fp32 tl.dot: needed under TRITON_INTERPRET=1, where a
bf16 tl.dot returns garbage (environment.md), and the fp32-input path on GPUs (true fp32 FMAs, not TF32
tensor cores: fp32 models are the exactness setting). On GPUs bf16/fp16 tiles go to the tensor cores with
an fp32 accumulator.

Program order: both kernels run on a 1-D grid of n_row_blocks * n_cols programs, mapped by _grouped_tile to
(row block, vocab split / tile) in groups of GROUP_N row blocks that walk the whole vocab dimension before
the next group starts (Triton's matmul tutorial GROUP_SIZE_M). Resident programs then share a few row
blocks of hidden (GROUP_N * BLOCK_N * H elements, L2-sized) instead of touching all of hidden for every vocab
tile, as the former rows-fastest 2-D grid did (kernels/traffic_model.py estimates the HBM bytes of both).
Which program computes a (row block, split) pair changes nothing it computes: results are bitwise those of
the rows-fastest order (tests/kernels/test_program_order.py).
"""

import triton
import triton.language as tl

from .._triton_utils import store_rounded


@triton.jit
def _grouped_tile(pid, n_row_blocks, n_cols, GROUP_N: tl.constexpr):
    """(row block, column) of program `pid` in grouped order: row blocks fastest inside a group of GROUP_N
    (fewer in the last group), groups one after another. A bijection of [0, n_row_blocks * n_cols); with
    GROUP_N >= n_row_blocks it is the rows-fastest order (pid % n_row_blocks, pid // n_row_blocks)."""
    per_group = GROUP_N * n_cols
    first = (pid // per_group) * GROUP_N
    size = tl.minimum(n_row_blocks - first, GROUP_N)
    local = pid % per_group
    return first + local % size, local // size


@triton.jit
def _logits_tile(h_ptr, w_ptr, rows, cols, row_ok, col_ok, H, stride_hn, stride_wv, inv_temperature,
                 BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, DOT_FP32: tl.constexpr):
    """z = hidden[rows] @ weight[cols].T * (1/T), fp32 [BLOCK_N, BLOCK_V]; invalid columns are -inf."""
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    ks = tl.arange(0, BLOCK_H)
    h_rows = h_ptr + rows.to(tl.int64)[:, None] * stride_hn
    w_rows = w_ptr + cols.to(tl.int64)[:, None] * stride_wv
    for k0 in range(0, H, BLOCK_H):
        k_ok = (k0 + ks) < H
        h_NK = tl.load(h_rows + (k0 + ks)[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w_VK = tl.load(w_rows + (k0 + ks)[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        if DOT_FP32:
            # input_precision="ieee": Triton's default for fp32 operands is TF32 (10-bit mantissas) on
            # sm_80+, arithmetic the fp32 tolerances were never validated against
            acc = tl.dot(h_NK.to(tl.float32), tl.trans(w_VK.to(tl.float32)), acc, input_precision="ieee")
        else:
            acc = tl.dot(h_NK, tl.trans(w_VK), acc)
    z_NV = acc * inv_temperature
    return tl.where(col_ok[None, :], z_NV, float("-inf"))


@triton.jit
def linear_stats_fwd_kernel(
    h_ptr, w_ptr, labels_ptr, m_ptr, ls_ptr, ent_ptr, zt_ptr,
    N, V, H, stride_hn, stride_wv, inv_temperature, cols_per_split,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, GROUP_N: tl.constexpr,
    WITH_ENTROPY: tl.constexpr, DOT_FP32: tl.constexpr,
):
    """Grid (row blocks * vocab splits,) in grouped order (_grouped_tile). Each program streams its split's
    tiles with per-row online (max, sum-exp, sum e*(z-max)) and writes the split's (max, log sum-exp,
    entropy, z_label or 0) to [split, row]; the splits are merged afterwards in a fixed order
    (vocab_parallel.merge_pieces). No atomics anywhere."""
    pid_n, split = _grouped_tile(tl.program_id(0), tl.cdiv(N, BLOCK_N), tl.cdiv(V, cols_per_split), GROUP_N)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    labels = tl.load(labels_ptr + rows, mask=row_ok, other=-1)
    v_lo = split * cols_per_split
    v_hi = tl.minimum(v_lo + cols_per_split, V)
    m = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK_N,), tl.float32)
    w = tl.zeros((BLOCK_N,), tl.float32)
    zt = tl.zeros((BLOCK_N,), tl.float32)
    for v0 in range(v_lo, v_hi, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < v_hi
        z_NV = _logits_tile(h_ptr, w_ptr, rows, cols, row_ok, col_ok, H, stride_hn, stride_wv,
                            inv_temperature, BLOCK_N, BLOCK_V, BLOCK_H, DOT_FP32)
        zt += tl.sum(tl.where(cols[None, :] == labels[:, None], z_NV, 0.0), axis=1)
        m_new = tl.maximum(m, tl.max(z_NV, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        e_NV = tl.exp(z_NV - m_safe[:, None])
        scale = tl.exp(m - m_safe)
        if WITH_ENTROPY:
            d_NV = tl.where(e_NV > 0, z_NV - m_safe[:, None], 0.0)
            w = tl.where(s > 0, scale * (w + s * (m - m_safe)), 0.0) + tl.sum(e_NV * d_NV, axis=1)
        s = s * scale + tl.sum(e_NV, axis=1)
        m = m_new
    log_s = tl.log(s)
    out = split.to(tl.int64) * N + rows
    tl.store(m_ptr + out, m, mask=row_ok)
    tl.store(ls_ptr + out, log_s, mask=row_ok)
    tl.store(zt_ptr + out, zt, mask=row_ok)
    if WITH_ENTROPY:
        tl.store(ent_ptr + out, log_s - w / s, mask=row_ok)


@triton.jit
def linear_dz_kernel(
    h_ptr, w_ptr, labels_ptr, m_ptr, ls_ptr, ent_ptr, g_ptr, g_ent_ptr, dz_ptr,
    N, V, H, stride_hn, stride_wv, inv_temperature,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, GROUP_N: tl.constexpr,
    WITH_ENTROPY: tl.constexpr, DOT_FP32: tl.constexpr,
):
    """Backward, one vocab chunk, grid (row blocks * vocab tiles,) in grouped order (_grouped_tile):
    recompute the logits tile and write dz = (1/T)(g (onehot - p) - g_ent p (log p + H)) as [N, V] in
    dz_ptr's dtype (fp32, or bf16/fp16 for tensor-core GEMMs on CUDA; V = the chunk's width; labels are
    chunk-local). dhidden and dweight are then deterministic GEMMs of dz (cpu.linear_grad)."""
    pid_n, pid_v = _grouped_tile(tl.program_id(0), tl.cdiv(N, BLOCK_N), tl.cdiv(V, BLOCK_V), GROUP_N)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok = rows < N
    col_ok = cols < V
    z_NV = _logits_tile(h_ptr, w_ptr, rows, cols, row_ok, col_ok, H, stride_hn, stride_wv, inv_temperature,
                        BLOCK_N, BLOCK_V, BLOCK_H, DOT_FP32)
    m = tl.load(m_ptr + rows, mask=row_ok, other=0.0)
    ls = tl.load(ls_ptr + rows, mask=row_ok, other=0.0)
    g = tl.load(g_ptr + rows, mask=row_ok, other=0.0)
    labels = tl.load(labels_ptr + rows, mask=row_ok, other=-1)
    log_p_NV = (z_NV - m[:, None]) - ls[:, None]
    p_NV = tl.exp(log_p_NV)
    dz_NV = tl.where(cols[None, :] == labels[:, None], g[:, None], 0.0) - g[:, None] * p_NV
    if WITH_ENTROPY:
        g_ent = tl.load(g_ent_ptr + rows, mask=row_ok, other=0.0)
        ent = tl.load(ent_ptr + rows, mask=row_ok, other=0.0)
        dz_NV -= g_ent[:, None] * tl.where(p_NV > 0, p_NV * (log_p_NV + ent[:, None]), 0.0)
    out = dz_ptr + rows.to(tl.int64)[:, None] * V + cols[None, :]
    store_rounded(out, dz_NV * inv_temperature, row_ok[:, None] & col_ok[None, :])
