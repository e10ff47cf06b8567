"""ONE Triton launch scoring up to three models (policy, PRM, reference) and forming the implicit reward, for
vocabularies that fit one split (V <= linear_logprob.triton_op's COLS_PER_SPLIT); wider ones go through the
vocab-split stats kernels and a torch epilogue instead (sharded.split_forward: one program per row tile
streaming a 152k vocabulary would fill N/64 SMs and re-read the weights per wave).

Legend: a program owns BLOCK_N rows and streams the whole vocabulary of each model in turn; a model is
absent (KIND 0), given as logits [N, V] (KIND 1, tiles loaded) or as (hidden [N, H], weight [V, H])
(KIND 2, logits tiles computed on chip with tl.dot, never stored). Per model it keeps fp32 (z_label, max, log
sum-exp below the max), then writes the three log-probs, the PRM's (max, log-sum-exp below it) for the
backward of linear_prime_rewards, and reward = beta*((z_prm - z_ref) - (lse_prm - lse_ref)) from those fp32
pieces (lse never rounded as one number), 0 where mask is 0. No splits, no atomics: a row's results never
depend on the other rows.

prime_rewards_seq_kernel is the same pass plus the per-sequence partial sums of the RLOO baseline
(m_i = sum_t r_it / n_i, prime_spec 7.3), for sequences given as contiguous row ranges (cu_seqlens; the
launcher passes each row's sequence id). A program cannot finish a sum that crosses its tile, and float
atomics would make the sums run-to-run nondeterministic, so each program writes partials with one writer
per slot:
  * head[tile]: the (sum, count) of the run of rows that contains the tile's first row (the part of that
    sequence inside this tile; the whole sequence when it starts there and ends inside);
  * start[seq]: the (sum, count) of the run that starts at a sequence's first row, when that row is not a
    tile's first row (a sequence starts in exactly one tile).
The launcher then adds, per sequence, start[seq] + the head[] values of the tiles whose first row lies in
the sequence (contiguous tiles; a fixed-order segmented scan in op.py). Inside a tile a run's sum is a
[BLOCK_N, BLOCK_N] same-sequence masked tl.sum: deterministic, and BLOCK_N^2 work per tile is nothing
next to the V x H streaming above it. The sums are 0/0 for empty sequences.
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
def _rewards_tile(
    labels_ptr, mask_ptr, logp_ptr, rows, row_ok,
    pol_a, pol_w, pol_V, pol_H, pol_sa, pol_sw,
    prm_a, prm_w, prm_V, prm_H, prm_sa, prm_sw,
    ref_a, ref_w, ref_V, ref_H, ref_sa, ref_sw,
    N, beta,
    POL_KIND: tl.constexpr, PRM_KIND: tl.constexpr, REF_KIND: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    POL_DOT_FP32: tl.constexpr, PRM_DOT_FP32: tl.constexpr, REF_DOT_FP32: tl.constexpr,
):
    """Stores the tile's three log-probs; returns (reward fp32 [BLOCK_N], 0 where masked; keep bool)."""
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
    # the PRM's softmax pieces: the backward of linear_prime_rewards (function.py) recomputes p = exp(z - m - ls)
    # from them, as linear_token_logprobs' backward does from its own, instead of a second pass for them
    tl.store(logp_ptr + 3 * N + rows, m_prm, mask=row_ok)
    tl.store(logp_ptr + 4 * N + rows, ls_prm, mask=row_ok)
    # (z_prm - z_ref) - (lse_prm - lse_ref), regrouped as
    # ((z_prm - m_prm) - (z_ref - m_ref)) - (ls_prm - ls_ref):
    # z - m is exact when z is near the max (Sterbenz), even under a +1e4 offset on one model only, where
    # z_prm - z_ref itself would already round to 1e-3.
    reward = beta * (((zt_prm - m_prm) - (zt_ref - m_ref)) - (ls_prm - ls_ref))
    keep = row_ok
    if HAS_MASK:
        keep = keep & (tl.load(mask_ptr + rows, mask=row_ok, other=0) != 0)
        reward = tl.where(keep, reward, 0.0)
    return reward, keep


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
    """logp_ptr: fp32 [5, N] (policy, prm, ref log-probs, then the PRM's max and log-sum-exp below it);
    reward_ptr: fp32 [N]."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    reward, keep = _rewards_tile(
        labels_ptr, mask_ptr, logp_ptr, rows, row_ok,
        pol_a, pol_w, pol_V, pol_H, pol_sa, pol_sw, prm_a, prm_w, prm_V, prm_H, prm_sa, prm_sw,
        ref_a, ref_w, ref_V, ref_H, ref_sa, ref_sw, N, beta,
        POL_KIND, PRM_KIND, REF_KIND, HAS_MASK, BLOCK_N, BLOCK_V, BLOCK_H, POL_DOT_FP32, PRM_DOT_FP32,
        REF_DOT_FP32)
    tl.store(reward_ptr + rows, reward, mask=row_ok)


@triton.jit
def prime_rewards_seq_kernel(
    labels_ptr, mask_ptr, logp_ptr, reward_ptr,
    seq_ptr, head_sum_ptr, head_cnt_ptr, start_sum_ptr, start_cnt_ptr,
    pol_a, pol_w, pol_V, pol_H, pol_sa, pol_sw,
    prm_a, prm_w, prm_V, prm_H, prm_sa, prm_sw,
    ref_a, ref_w, ref_V, ref_H, ref_sa, ref_sw,
    N, beta,
    POL_KIND: tl.constexpr, PRM_KIND: tl.constexpr, REF_KIND: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    POL_DOT_FP32: tl.constexpr, PRM_DOT_FP32: tl.constexpr, REF_DOT_FP32: tl.constexpr,
):
    """prime_rewards_kernel plus per-sequence partials (module docstring). seq_ptr: int32 [N], each row's
    sequence id, nondecreasing; head_*: [n_tiles]; start_*: [S], zero-initialised (only the sequences that
    start off a tile's first row are written). Sums fp32 (masked rewards count as 0), counts int32."""
    tile = tl.program_id(0)
    local = tl.arange(0, BLOCK_N)
    rows = tile * BLOCK_N + local
    row_ok = rows < N
    reward, keep = _rewards_tile(
        labels_ptr, mask_ptr, logp_ptr, rows, row_ok,
        pol_a, pol_w, pol_V, pol_H, pol_sa, pol_sw, prm_a, prm_w, prm_V, prm_H, prm_sa, prm_sw,
        ref_a, ref_w, ref_V, ref_H, ref_sa, ref_sw, N, beta,
        POL_KIND, PRM_KIND, REF_KIND, HAS_MASK, BLOCK_N, BLOCK_V, BLOCK_H, POL_DOT_FP32, PRM_DOT_FP32,
        REF_DOT_FP32)
    tl.store(reward_ptr + rows, reward, mask=row_ok)

    seq = tl.load(seq_ptr + rows, mask=row_ok, other=-1)
    prev = tl.load(seq_ptr + rows - 1, mask=row_ok & (rows > 0), other=-1)
    # Rows past N (seq -1) and masked rows contribute nothing; tl.where (not a multiply) keeps another
    # sequence's NaN out of this one's sum.
    r_valid = tl.where(keep, reward, 0.0)
    same = seq[:, None] == seq[None, :]  # [BLOCK_N, BLOCK_N]; sequences are contiguous: same = same run
    run_sum = tl.sum(tl.where(same, r_valid[None, :], 0.0), axis=1)
    run_cnt = tl.sum((same & keep[None, :]).to(tl.int32), axis=1)
    first = local == 0
    tile_N = tile + local * 0
    tl.store(head_sum_ptr + tile_N, run_sum, mask=first)
    tl.store(head_cnt_ptr + tile_N, run_cnt, mask=first)
    starts = row_ok & (seq != prev) & (local != 0)
    tl.store(start_sum_ptr + seq, run_sum, mask=starts)
    tl.store(start_cnt_ptr + seq, run_cnt, mask=starts)
