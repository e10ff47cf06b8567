"""Chunked PyTorch implementation of the fused-head log-prob (the CPU path), and the shared backward driver.

Memory is bounded by one fp32 logits block of ROWS_PER_CHUNK x COLS_PER_CHUNK (16 MB) plus, for bf16/fp16
inputs, fp32 copies of one weight chunk and of hidden: never [N, V]. The loop runs vocab chunks outside and
row chunks inside, so each weight chunk is read (and converted) once and stays hot in cache while every row
block multiplies it. Numerics match the Triton kernels: fp32 logits, per-piece (max, log-sum-exp, entropy,
z_label)
merged exactly (vocab_parallel.merge_pieces), gradient dz = (1/T)(g (onehot - p) - g_ent p (log p + H)).

Cost floor (measured single-thread, fp32, N=1024, H=896, V=16384-32768): GEMMs are ~90% of forward+backward
and run at the same throughput here as in torch.compile's graph, but bounded memory means four N*H*V GEMMs
(forward logits, backward recompute, dh, dW) against compile's three (it keeps the [N, V] logits): about
1.2x compile's CPU time, forward alone at parity. Only fewer GEMM FLOPs would close that gap.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from ..vocab_parallel import merge_pieces

_log = logging.getLogger(__name__)

ROWS_PER_CHUNK = 1024
COLS_PER_CHUNK = 4096


def _ranges(total: int, step: int):
    for lo in range(0, total, step):
        yield lo, min(total, lo + step)


def _labels_in_chunk(labels_N: torch.Tensor, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row indices whose label is in [lo, hi), their chunk-local columns)."""
    rows_R = torch.nonzero((labels_N >= lo) & (labels_N < hi)).squeeze(1)
    return rows_R, labels_N[rows_R] - lo


def linear_stats(hidden_NH: torch.Tensor, weight_VH: torch.Tensor, labels_N: torch.Tensor, temperature: float,
                 with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(max, log sum exp(z - max), entropy | None, z_label or 0 where the label is -1 / elsewhere), fp32
    [N] each."""
    n_rows, vocab = hidden_NH.shape[0], weight_VH.shape[0]
    inv_t = 1.0 / temperature
    h_NH = hidden_NH.float()
    m_N = torch.full((n_rows,), float("-inf"), dtype=torch.float32)
    ls_N = torch.full((n_rows,), float("-inf"), dtype=torch.float32)
    ent_N = torch.zeros(n_rows, dtype=torch.float32) if with_entropy else None
    zt_N = torch.zeros(n_rows, dtype=torch.float32)
    buf = torch.empty(min(n_rows, ROWS_PER_CHUNK) * min(vocab, COLS_PER_CHUNK), dtype=torch.float32)
    for v0, v1 in _ranges(vocab, COLS_PER_CHUNK):
        w_CH = weight_VH[v0:v1].float()
        rows_R, cols_R = _labels_in_chunk(labels_N, v0, v1)
        for n0, n1 in _ranges(n_rows, ROWS_PER_CHUNK):
            z_RC = torch.mm(h_NH[n0:n1], w_CH.T, out=buf[: (n1 - n0) * (v1 - v0)].view(n1 - n0, v1 - v0))
            if inv_t != 1.0:
                z_RC.mul_(inv_t)
            sel = (rows_R >= n0) & (rows_R < n1)
            zt_N[rows_R[sel]] = z_RC[rows_R[sel] - n0, cols_R[sel]]
            m_R, ls_R, ent_R = _block_stats(z_RC, with_entropy)
            pieces = (torch.stack((m_N[n0:n1], m_R)), torch.stack((ls_N[n0:n1], ls_R)),
                      None if ent_R is None else torch.stack((ent_N[n0:n1], ent_R)), torch.zeros(2, n1 - n0))
            m_N[n0:n1], ls_N[n0:n1], ent_new, _ = merge_pieces(*pieces)
            if ent_R is not None:
                ent_N[n0:n1] = ent_new
    return m_N, ls_N, ent_N, zt_N


def _block_stats(z_RC: torch.Tensor, with_entropy: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(max, log sum exp(z - max), entropy | None) of each row of a finite fp32 block (overwritten)."""
    m_R = z_RC.amax(dim=1)
    e_RC = z_RC.sub_(m_R[:, None])
    if not with_entropy:
        return m_R, torch.log(e_RC.exp_().sum(dim=1)), None
    d_RC = e_RC.clone()
    e_RC.exp_()
    s_R = e_RC.sum(dim=1)
    w_R = (e_RC * d_RC).sum(dim=1)  # linear logits are finite, so no 0 * inf guard is needed here
    log_s_R = torch.log(s_R)
    return m_R, log_s_R, log_s_R - w_R / s_R


def cpu_dz(h_RH: torch.Tensor, w_CH: torch.Tensor, labels_R: torch.Tensor, m_R: torch.Tensor,
           ls_R: torch.Tensor, ent_R: torch.Tensor | None, g_R: torch.Tensor, g_ent_R: torch.Tensor | None,
           inv_t: float,
           out: torch.Tensor) -> torch.Tensor:
    """dz of one (row, vocab) block in fp32, written into `out`; labels are chunk-local (others never
    match a column)."""
    log_p_RC = torch.mm(h_RH, w_CH.T, out=out)
    if inv_t != 1.0:
        log_p_RC.mul_(inv_t)
    log_p_RC.sub_(m_R[:, None]).sub_(ls_R[:, None])
    if g_ent_R is None:
        dz_RC = log_p_RC.exp_().mul_(-g_R[:, None])
    else:
        p_RC = torch.exp(log_p_RC)
        # -p * (g + g_ent (log p + H)), in place on the log p block
        dz_RC = log_p_RC.add_(ent_R[:, None]).mul_(g_ent_R[:, None]).add_(g_R[:, None]).mul_(p_RC).neg_()
    rows_in = torch.nonzero((labels_R >= 0) & (labels_R < dz_RC.shape[1])).squeeze(1)
    dz_RC[rows_in, labels_R[rows_in]] += g_R[rows_in]
    if inv_t != 1.0:
        dz_RC.mul_(inv_t)
    return dz_RC


DzFn = Callable[..., torch.Tensor]


_fused_lowp_accumulate = True  # cleared (with one warning) if this build lacks CUDA's addmm.dtype_out


def _accumulate(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor, first: bool = False) -> None:
    """acc (fp32) += a @ b, in place; with first, acc = a @ b (acc's old contents, e.g. uninitialised memory,
    are ignored: no zero-fill pass before the first GEMM; a GEMM with beta = 0 never reads them).

    bf16/fp16 operands on CUDA: one tensor-core GEMM with fp32 output accumulating straight into acc
    (addmm.dtype_out, beta = 1): no [rows, H] fp32 temporary per chunk (235 MB at 16k rows x H 3584 used to
    be allocated and added per chunk). Elsewhere (CPU has no bf16 -> fp32 GEMM overload) the operands are
    widened and the fp32 GEMM accumulates in place."""
    global _fused_lowp_accumulate
    if a.dtype != torch.float32 and acc.is_cuda and _fused_lowp_accumulate:
        try:
            torch.ops.aten.addmm.dtype_out(acc, a, b, torch.float32, beta=0.0 if first else 1.0, out=acc)
            return
        except (RuntimeError, NotImplementedError) as error:
            _fused_lowp_accumulate = False
            _log.warning("in-place bf16 -> fp32 GEMM accumulation unavailable (%s); widening the operands", error)
    if a.dtype != torch.float32:
        a, b = a.float(), b.float()
    if first and acc.is_contiguous():
        torch.mm(a, b, out=acc)
    elif first:
        acc.copy_(torch.mm(a, b))
    else:
        acc.addmm_(a, b)


def linear_grad(dz_fn: DzFn, rows_per_chunk: int, cols_per_chunk: int, grad_logp_N: torch.Tensor,
                grad_ent_N: torch.Tensor | None, hidden_NH: torch.Tensor, weight_VH: torch.Tensor,
                labels_N: torch.Tensor, m_N: torch.Tensor, ls_N: torch.Tensor, ent_N: torch.Tensor | None,
                temperature: float, need_dh: bool, need_dw: bool, dz_dtype: torch.dtype = torch.float32
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Recompute-in-backward driver shared by the CPU and Triton paths (dz_fn differs).

    For each vocab chunk (outer) and row chunk (inner): dz = dz_fn(...), dh[rows] += dz @ W[chunk] and
    dW[chunk] += dz.T @ h[rows], with fp32 accumulators summed in a fixed order: deterministic, no atomics.
    dz is fp32 (CPU, interpreter, fp32 inputs) or, on CUDA with bf16/fp16 inputs, the input dtype rounded
    once from fp32, so both GEMMs run on the tensor cores with fp32 outputs (PyTorch's own bf16 backward
    rounds dlogits the same way). dh is returned in fp32 (callers cast after any TP all-reduce); dW in the
    weight's dtype.
    """
    n_rows, hidden = hidden_NH.shape
    vocab = weight_VH.shape[0]
    inv_t = 1.0 / temperature
    low_precision = dz_dtype != torch.float32
    h_NH = hidden_NH if low_precision else hidden_NH.float()
    # dh and (fp32 weights) dW are written by the first GEMM into them and accumulated by the next ones,
    # so neither is zero-filled nor copied from a temporary (one pass over N*H / V*H less each).
    dh_NH = torch.empty((n_rows, hidden), dtype=torch.float32, device=hidden_NH.device) if need_dh else None
    dw_VH = torch.empty_like(weight_VH) if need_dw else None
    dw_in_place = need_dw and weight_VH.dtype == torch.float32 and dw_VH.is_contiguous()
    buf = torch.empty(min(n_rows, rows_per_chunk) * min(vocab, cols_per_chunk), dtype=dz_dtype,
                      device=hidden_NH.device)
    if vocab == 0 and need_dh:
        dh_NH.zero_()
    for v0, v1 in _ranges(vocab, cols_per_chunk):
        w_CH = weight_VH[v0:v1] if low_precision else weight_VH[v0:v1].float()
        labels_local_N = labels_N - v0  # chunk-local; rows whose label is elsewhere never match a column
        dw_CH = None
        if dw_in_place:
            dw_CH = dw_VH[v0:v1]
        elif need_dw:
            dw_CH = torch.empty((v1 - v0, hidden), dtype=torch.float32, device=hidden_NH.device)
        if n_rows == 0 and need_dw:
            dw_CH.zero_()
        for n0, n1 in _ranges(n_rows, rows_per_chunk):
            out = buf[: (n1 - n0) * (v1 - v0)].view(n1 - n0, v1 - v0)
            dz_RC = dz_fn(
                hidden_NH[n0:n1], weight_VH[v0:v1], h_NH[n0:n1], w_CH, labels_local_N[n0:n1], m_N[n0:n1],
                ls_N[n0:n1], None if ent_N is None else ent_N[n0:n1], grad_logp_N[n0:n1],
                None if grad_ent_N is None else grad_ent_N[n0:n1], inv_t, out)
            if need_dh:
                _accumulate(dh_NH[n0:n1], dz_RC, w_CH, first=v0 == 0)
            if need_dw:
                _accumulate(dw_CH, dz_RC.T, h_NH[n0:n1], first=n0 == 0)
        if need_dw and not dw_in_place:
            dw_VH[v0:v1] = dw_CH
    return dh_NH, dw_VH


def cpu_dz_fn(_h_raw, _w_raw, h_RH, w_CH, labels_R, m_R, ls_R, ent_R, g_R, g_ent_R, inv_t, out):
    """Adapter with the dz_fn signature of linear_grad (the Triton one uses the raw-dtype operands)."""
    return cpu_dz(h_RH, w_CH, labels_R, m_R, ls_R, ent_R, g_R, g_ent_R, inv_t, out)


dz_fn = cpu_dz_fn


def grad_chunking(_n_rows: int, _device: torch.device) -> tuple[int, int]:
    return ROWS_PER_CHUNK, COLS_PER_CHUNK


def dz_dtype(_dtype: torch.dtype, _device: torch.device) -> torch.dtype:
    return torch.float32
