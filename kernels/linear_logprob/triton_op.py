"""Launchers for the fused-head Triton kernels (CUDA, or CPU tensors under TRITON_INTERPRET=1)."""

from __future__ import annotations

import torch
import triton

from .._backend import triton_interpret
from ..vocab_parallel import merge_pieces
from .kernel import linear_dz_kernel, linear_stats_fwd_kernel


def tile_config(device: torch.device) -> dict:
    """Tile sizes. GPU: 64x128 logits tiles, 64-wide K steps, 8 warps (zero spills on sm_80/sm_90 per
    kernels/static_check.py). Interpreter: small tiles (every tile op is a numpy call).

    GROUP_N: row blocks per program group (kernel.py, _grouped_tile). On GPUs 32 row blocks of 64 rows at
    the 7B head (H=3584, bf16) are 14.7 MB of hidden, under a third of an H100/H200's 50 MB L2, which leaves
    room for the weight tiles the resident programs stream (kernels/traffic_model.py: the modelled HBM
    traffic of the forward drops from ~138 GB rows-fastest to ~10 GB). Interpreter: 3, so that the small test
    shapes have partial last groups. prime_rewards (op.py) shares BLOCK_N/BLOCK_V/BLOCK_H but not GROUP_N."""
    if device.type != "cuda":
        return dict(BLOCK_N=16, BLOCK_V=32, BLOCK_H=32, GROUP_N=3, num_warps=4, COLS_PER_SPLIT=64)
    return dict(BLOCK_N=64, BLOCK_V=128, BLOCK_H=64, GROUP_N=32, num_warps=8, num_stages=3, COLS_PER_SPLIT=4096)


def _dot_fp32(dtype: torch.dtype) -> bool:
    # bf16/fp16 tl.dot is wrong under the interpreter (environment.md); fp32 there, tensor cores on GPU.
    return triton_interpret() or dtype == torch.float32


def linear_stats(hidden_NH: torch.Tensor, weight_VH: torch.Tensor, labels_N: torch.Tensor, temperature: float,
                 with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(max, log sum exp(z - max), entropy | None, z_label or 0), fp32 [N]: per-split partials, then a
    fixed-order merge.

    The split width is fixed (COLS_PER_SPLIT), independent of N, so a row's result does not depend on the
    batch it is in."""
    cfg = tile_config(hidden_NH.device)
    n_rows, hidden = hidden_NH.shape
    vocab = weight_VH.shape[0]
    n_splits = triton.cdiv(vocab, cfg["COLS_PER_SPLIT"])
    m_KN = torch.empty((n_splits, n_rows), dtype=torch.float32, device=hidden_NH.device)
    ls_KN = torch.empty_like(m_KN)
    zt_KN = torch.empty_like(m_KN)
    ent_KN = torch.empty_like(m_KN) if with_entropy else m_KN
    if n_rows:
        grid = (triton.cdiv(n_rows, cfg["BLOCK_N"]) * n_splits,)  # 1-D, grouped order (kernel.py)
        linear_stats_fwd_kernel[grid](
            hidden_NH, weight_VH, labels_N, m_KN, ls_KN, ent_KN, zt_KN, n_rows, vocab, hidden,
            hidden_NH.stride(0), weight_VH.stride(0), 1.0 / temperature, cfg["COLS_PER_SPLIT"],
            BLOCK_N=cfg["BLOCK_N"], BLOCK_V=cfg["BLOCK_V"], BLOCK_H=cfg["BLOCK_H"], GROUP_N=cfg["GROUP_N"],
            WITH_ENTROPY=with_entropy, DOT_FP32=_dot_fp32(hidden_NH.dtype), num_warps=cfg["num_warps"],
            **({"num_stages": cfg["num_stages"]} if "num_stages" in cfg else {}))
    return merge_pieces(m_KN, ls_KN, ent_KN if with_entropy else None, zt_KN)


def triton_dz_fn(h_raw_RH, w_raw_CH, _h_RH, _w_CH, labels_R, m_R, ls_R, ent_R, g_R, g_ent_R, inv_t, out):
    """dz of one (rows x vocab chunk) block via linear_dz_kernel, written into `out` (contiguous; fp32 or
    the input dtype, see dz_dtype)."""
    cfg = tile_config(h_raw_RH.device)
    n_rows, width = out.shape
    with_entropy = g_ent_R is not None
    grid = (triton.cdiv(n_rows, cfg["BLOCK_N"]) * triton.cdiv(width, cfg["BLOCK_V"]),)  # grouped (kernel.py)
    linear_dz_kernel[grid](
        h_raw_RH, w_raw_CH, labels_R, m_R, ls_R, ent_R if with_entropy else m_R, g_R,
        g_ent_R if with_entropy else g_R, out, n_rows, width, h_raw_RH.shape[1], h_raw_RH.stride(0),
        w_raw_CH.stride(0), inv_t, BLOCK_N=cfg["BLOCK_N"], BLOCK_V=cfg["BLOCK_V"], BLOCK_H=cfg["BLOCK_H"],
        GROUP_N=cfg["GROUP_N"], WITH_ENTROPY=with_entropy, DOT_FP32=_dot_fp32(h_raw_RH.dtype),
        num_warps=cfg["num_warps"])
    return out


def dz_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """dz in the input dtype on CUDA for bf16/fp16 (tensor-core GEMMs for dh/dW), else fp32."""
    if device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        return dtype
    return torch.float32


def grad_chunking(n_rows: int, device: torch.device) -> tuple[int, int]:
    """(rows, cols) per dz block: all rows at once and as many columns as fit in ~256 MB on a GPU."""
    if device.type != "cuda":
        return max(n_rows, 1), 256
    cols = max(1024, (64 << 20) // max(n_rows, 1) // 1024 * 1024)
    return max(n_rows, 1), cols


dz_fn = triton_dz_fn
