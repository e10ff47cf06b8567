"""Triton kernels of `rloo_advantages`: per-row statistics, discounted reverse scans, whitening.

Legend: B rows, T positions, BT tile of positions. One program per row walks the row's T tiles from the
last one to the first, with a scalar carry between tiles; inside a tile (loaded with ascending, contiguous
offsets, so loads vectorize) a reverse scan runs. Triton defines a reverse scan as flip, forward scan,
flip (its test suite checks non-commutative combines such as linear recurrences that way, and the
interpreter implements it so): the combine's left argument accumulates the later positions.
"""

import triton
import triton.language as tl


@triton.jit
def _affine_combine(a_l, b_l, a_r, b_r):
    # Each element is the map G -> b + a*G (G_t = x_t + gamma*G_{t+1}); (a_l, b_l) composes everything
    # already scanned (later positions), (a_r, b_r) the next (earlier) position: apply left, then right.
    return a_l * a_r, b_r + a_r * b_l


@triton.jit
def _discounted_tile(b_x, carry, gamma, GAMMA_ONE: tl.constexpr):
    """G_t = x_t + gamma*G_{t+1} over one tile, G after the tile = carry: (G [BT], G at the tile's start)."""
    BT: tl.constexpr = b_x.shape[0]
    o_k = tl.arange(0, BT)
    if GAMMA_ONE:
        b_g = tl.cumsum(b_x, 0, reverse=True) + carry
    else:
        b_a = tl.full([BT], 1.0, tl.float32) * gamma
        b_pow, b_sum = tl.associative_scan((b_a, b_x), 0, _affine_combine, reverse=True)
        # b_pow = gamma^(BT-k): how far the carry is discounted. Positions past T (zeros in the row's last
        # tile) only add gamma factors to the carry, which is 0 there.
        b_g = b_sum + b_pow * carry
    # The previous (earlier) tile continues from the value at this tile's first element.
    new_carry = tl.sum(tl.where(o_k == 0, b_g, 0.0), 0)
    return b_g, new_carry


@triton.jit
def rloo_row_stats_kernel(
    r_ptr,  # [B, T] rewards (any float)
    m_ptr,  # [B, T] mask (uint8 0/1)
    sum_ptr,  # [B] fp32 out: masked reward sum
    count_ptr,  # [B] fp32 out: valid count
    absmax_ptr,  # [B] fp32 out: max |reverse cumsum|
    T,
    stride_r,
    stride_m,
    BT: tl.constexpr,
    NORM: tl.constexpr,  # compute max |reverse cumsum| for batch_norm
):
    i_b = tl.program_id(0).to(tl.int64)
    p_r = r_ptr + i_b * stride_r
    p_m = m_ptr + i_b * stride_m
    o_k = tl.arange(0, BT)
    b_total = tl.zeros((), tl.float32)
    b_count = tl.zeros((), tl.float32)
    b_absmax = tl.zeros((), tl.float32)
    n_tiles = tl.cdiv(T, BT)
    for i_t in range(0, n_tiles):
        o_t = (n_tiles - 1 - i_t) * BT + o_k  # tiles from the end of the row towards its start
        m_t = o_t < T
        b_valid = tl.load(p_m + o_t, mask=m_t, other=0) != 0
        b_x = tl.where(b_valid, tl.load(p_r + o_t, mask=m_t, other=0.0).to(tl.float32), 0.0)
        b_count += tl.sum(b_valid.to(tl.float32), 0)
        if NORM:
            b_c = tl.cumsum(b_x, 0, reverse=True) + b_total  # sum_{s>=t} r_s for the tile's positions
            b_absmax = tl.maximum(b_absmax, tl.max(tl.abs(b_c), 0), propagate_nan=tl.PropagateNan.ALL)
        b_total += tl.sum(b_x, 0)
    # A NaN anywhere in the row makes its total NaN; GPU max reductions may drop NaN, so re-inject it.
    b_absmax = tl.where(b_total != b_total, b_total, b_absmax)
    tl.store(sum_ptr + i_b, b_total)
    tl.store(count_ptr + i_b, b_count)
    tl.store(absmax_ptr + i_b, b_absmax)


@triton.jit
def rloo_returns_kernel(
    r_ptr,  # [B, T] rewards (any float)
    m_ptr,  # [B, T] mask (uint8 0/1)
    scale_ptr,  # [B] fp32: a valid token's process reward becomes scale*r_t - shift
    shift_ptr,  # [B] fp32
    outc_ptr,  # [B] fp32: the outcome part placed on the row's last valid token
    count_ptr,  # [B] fp32: valid count (prefix mask: the last valid position is count-1)
    out_ptr,  # [B, T] fp32 out: returns
    mean_ptr,  # [B] fp32 out: mean of the row's valid returns
    m2_ptr,  # [B] fp32 out: their sum of squared deviations from that mean
    T,
    stride_r,
    stride_m,
    stride_o,
    gamma_p,
    gamma_o,
    BT: tl.constexpr,
    GAMMA_P_ONE: tl.constexpr,
    GAMMA_O_ONE: tl.constexpr,
):
    i_b = tl.program_id(0).to(tl.int64)
    p_r = r_ptr + i_b * stride_r
    p_m = m_ptr + i_b * stride_m
    p_o = out_ptr + i_b * stride_o
    b_scale = tl.load(scale_ptr + i_b)
    b_shift = tl.load(shift_ptr + i_b)
    b_outc = tl.load(outc_ptr + i_b)
    i_last = tl.load(count_ptr + i_b).to(tl.int32) - 1  # prefix mask: the last valid position
    o_k = tl.arange(0, BT)
    b_carry_p = tl.zeros((), tl.float32)
    b_carry_o = tl.zeros((), tl.float32)
    b_n = tl.zeros((), tl.float32)
    b_mean = tl.zeros((), tl.float32)
    b_m2 = tl.zeros((), tl.float32)
    n_tiles = tl.cdiv(T, BT)
    for i_t in range(0, n_tiles):
        o_t = (n_tiles - 1 - i_t) * BT + o_k  # tiles from the end of the row towards its start
        m_t = o_t < T
        b_valid = tl.load(p_m + o_t, mask=m_t, other=0) != 0
        b_r = tl.load(p_r + o_t, mask=m_t, other=0.0).to(tl.float32)
        b_xp = tl.where(b_valid, b_r * b_scale - b_shift, 0.0)
        b_xo = tl.where(o_t == i_last, b_outc, 0.0)
        b_gp, b_carry_p = _discounted_tile(b_xp, b_carry_p, gamma_p, GAMMA_P_ONE)
        b_go, b_carry_o = _discounted_tile(b_xo, b_carry_o, gamma_o, GAMMA_O_ONE)
        b_ret = b_gp + b_go
        tl.store(p_o + o_t, b_ret, mask=m_t)
        # Chan et al.'s pairwise update: (n, mean, M2) of the tile merged into the row's, stable in fp32.
        b_tn = tl.sum(b_valid.to(tl.float32), 0)
        b_tmean = tl.sum(tl.where(b_valid, b_ret, 0.0), 0) / tl.maximum(b_tn, 1.0)
        b_tm2 = tl.sum(tl.where(b_valid, (b_ret - b_tmean) * (b_ret - b_tmean), 0.0), 0)
        b_new_n = b_n + b_tn
        b_delta = b_tmean - b_mean
        b_frac = b_tn / tl.maximum(b_new_n, 1.0)
        b_mean = b_mean + b_delta * b_frac
        b_m2 = b_m2 + b_tm2 + b_delta * b_delta * b_n * b_frac
        b_n = b_new_n
    tl.store(mean_ptr + i_b, b_mean)
    tl.store(m2_ptr + i_b, b_m2)


@triton.jit
def whiten_kernel(x_ptr, mean_ptr, inv_std_ptr, numel, BLOCK: tl.constexpr):
    """x <- (x - mean) * inv_std in place over a contiguous buffer (every position, padding included)."""
    i_p = tl.program_id(0).to(tl.int64)
    o_x = i_p * BLOCK + tl.arange(0, BLOCK)
    m_x = o_x < numel
    b_x = tl.load(x_ptr + o_x, mask=m_x, other=0.0)
    b_x = (b_x - tl.load(mean_ptr)) * tl.load(inv_std_ptr)
    tl.store(x_ptr + o_x, b_x, mask=m_x)
