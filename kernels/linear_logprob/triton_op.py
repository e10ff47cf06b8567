"""Launchers for the fused-head Triton kernels (CUDA, or CPU tensors under TRITON_INTERPRET=1)."""

from __future__ import annotations

import functools

import torch
import triton

from .._backend import triton_interpret
from ..vocab_parallel import merge_pieces
from .kernel import linear_dz_kernel, linear_stats_fwd_kernel
from .tiles import (
    AUTOTUNE_TILES,
    COLS_PER_SPLIT_CUDA,
    DEFAULT_TILE,
    INTERPRETER_TILE,
    autotunes,
    prune_by_shared_memory,
    triton_configs,
)


def tile_config(device: torch.device) -> dict:
    """The fixed tiles (tiles.py): DEFAULT_TILE on GPUs, INTERPRETER_TILE under the interpreter, with the
    fixed vocab split width. prime_rewards (op.py) shares BLOCK_N/BLOCK_V/BLOCK_H but not GROUP_N."""
    if device.type != "cuda":
        return dict(INTERPRETER_TILE.constexprs(), num_warps=INTERPRETER_TILE.num_warps, COLS_PER_SPLIT=64)
    return dict(DEFAULT_TILE.constexprs(), num_warps=DEFAULT_TILE.num_warps,
                num_stages=DEFAULT_TILE.num_stages, COLS_PER_SPLIT=COLS_PER_SPLIT_CUDA)


@functools.cache
def _autotuned(kernel: str):
    """Triton's autotuner around one fused-head kernel (tiles.py says when it runs and what it changes)."""
    fn = {"stats": linear_stats_fwd_kernel, "dz": linear_dz_kernel}[kernel]
    key = ["H", "V"] if kernel == "stats" else ["H"]
    return triton.autotune(configs=triton_configs(AUTOTUNE_TILES[kernel]), key=key, cache_results=True,
                           prune_configs_by={"early_config_prune": prune_by_shared_memory})(fn)


def _fixed_launch(cfg: dict) -> dict:
    launch = {k: cfg[k] for k in ("BLOCK_N", "BLOCK_V", "BLOCK_H", "GROUP_N", "num_warps")}
    return launch | ({"num_stages": cfg["num_stages"]} if "num_stages" in cfg else {})


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
        args = (hidden_NH, weight_VH, labels_N, m_KN, ls_KN, ent_KN, zt_KN, n_rows, vocab, hidden,
                hidden_NH.stride(0), weight_VH.stride(0), 1.0 / temperature, cfg["COLS_PER_SPLIT"])
        flags = dict(WITH_ENTROPY=with_entropy, DOT_FP32=_dot_fp32(hidden_NH.dtype))

        def grid(meta):  # 1-D, grouped order (kernel.py)
            return (triton.cdiv(n_rows, meta["BLOCK_N"]) * n_splits,)

        if autotunes(hidden_NH, triton_interpret()):
            _autotuned("stats")[grid](*args, **flags)
        else:
            linear_stats_fwd_kernel[grid](*args, **flags, **_fixed_launch(cfg))
    return merge_pieces(m_KN, ls_KN, ent_KN if with_entropy else None, zt_KN)


def triton_dz_fn(h_raw_RH, w_raw_CH, _h_RH, _w_CH, labels_R, m_R, ls_R, ent_R, g_R, g_ent_R, inv_t, out):
    """dz of one (rows x vocab chunk) block via linear_dz_kernel, written into `out` (contiguous; fp32 or
    the input dtype, see dz_dtype)."""
    cfg = tile_config(h_raw_RH.device)
    n_rows, width = out.shape
    with_entropy = g_ent_R is not None
    args = (h_raw_RH, w_raw_CH, labels_R, m_R, ls_R, ent_R if with_entropy else m_R, g_R,
            g_ent_R if with_entropy else g_R, out, n_rows, width, h_raw_RH.shape[1], h_raw_RH.stride(0),
            w_raw_CH.stride(0), inv_t)
    flags = dict(WITH_ENTROPY=with_entropy, DOT_FP32=_dot_fp32(h_raw_RH.dtype))

    def grid(meta):  # 1-D, grouped order (kernel.py)
        return (triton.cdiv(n_rows, meta["BLOCK_N"]) * triton.cdiv(width, meta["BLOCK_V"]),)

    if autotunes(h_raw_RH, triton_interpret()):
        _autotuned("dz")[grid](*args, **flags)
    else:
        linear_dz_kernel[grid](*args, **flags, **_fixed_launch(cfg))
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
