"""Fused-head tiles on CUDA: one fixed default, and an opt-in autotune set pruned by shared memory.

Default (PRIMEFLOW_KERNEL_AUTOTUNE unset or 0): every shape runs DEFAULT_TILE, so a result is a function of
the inputs alone: the same on every run on the same GPU type and Triton version.

PRIMEFLOW_KERNEL_AUTOTUNE=1: the bf16/fp16 forward (linear_stats_fwd_kernel) and backward recompute
(linear_dz_kernel) run under Triton's own autotuner over their AUTOTUNE_TILES, pruned to the ones whose operand
buffers fit the device's shared memory per block. The forward is tuned once per (H, V, dtypes), the backward
once per (H, dtypes): its V is the vocab chunk's width, which follows N (triton_op.grad_chunking), and keying
on it would retune for nearly every packed micro-batch. Timings are cached on disk (Triton's cache directory,
cache_results=True), so a resumed run on the same GPU type and Triton version picks the same tiles.

What a choice changes, and what it cannot:
- BLOCK_V is the width of the forward's online-softmax steps, so its (max, log-sum-exp) and everything
  after them move by fp32 rounding between tilings: the kernels' tolerances hold for every candidate
  (the gpu tests run them all), bitwise equality with the default does not. Ranks tune independently, so
  two ranks may run different tilings; each still computes its own rows (or vocab shard) correctly.
- COLS_PER_SPLIT is not tuned: the split width fixes which columns each partial covers, so per-row results
  stay independent of N (batch invariance) under any tiling.
- fp32 inputs are never tuned: fp32 is the exactness setting, and DEFAULT_TILE is the tiling its tolerances
  were validated at.
The candidates are tilings that compile for sm_90 without spilling (`python -m primeflow.kernels.static_check
--autotune-tiles`, bench/results/static_check_autotune_tiles.json; tested); kernels/traffic_model.py models each
one's HBM and L2->SM bytes at the 7B head.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch

AUTOTUNE_ENV = "PRIMEFLOW_KERNEL_AUTOTUNE"
COLS_PER_SPLIT_CUDA = 4096


@dataclass(frozen=True)
class HeadTile:
    """One tiling of the fused-head kernels: a BLOCK_N x BLOCK_V logits tile, BLOCK_H-wide K steps, GROUP_N
    row blocks per program group (kernel.py's _grouped_tile), launch warps and software-pipeline stages;
    min_capability: the oldest compute capability (x10) it compiles for without spilling."""

    block_n: int
    block_v: int
    block_h: int
    group_n: int
    num_warps: int
    num_stages: int
    min_capability: int = 80

    def operand_shared_bytes(self, elt_bytes: int) -> int:
        """Upper bound of the shared memory the tl.dot operand ring needs: num_stages buffers of a
        BLOCK_N x BLOCK_H hidden tile and a BLOCK_V x BLOCK_H weight tile. Exact for bf16 on sm_90 (static
        check: 73728 B at 64x128x64, 3 stages); sm_80 and fp32 compile to fewer buffers."""
        return self.num_stages * (self.block_n + self.block_v) * self.block_h * elt_bytes

    def constexprs(self) -> dict[str, int]:
        return {"BLOCK_N": self.block_n, "BLOCK_V": self.block_v, "BLOCK_H": self.block_h,
                "GROUP_N": self.group_n}

    def label(self) -> str:
        return f"{self.block_n}x{self.block_v}x{self.block_h}/g{self.group_n}/w{self.num_warps}/s{self.num_stages}"


# 64x128 logits tiles, 64-wide K steps, 8 warps: no spills on sm_80/sm_90 in bf16 and fp32 on sm_90.
# GROUP_N 32: 32 row blocks of 64 rows at the 7B head (H=3584, bf16) are 14.7 MB of hidden, under a third
# of an H100/H200's 50 MB L2 (traffic_model: forward HBM reads ~138 GB rows-fastest -> ~10 GB grouped).
DEFAULT_TILE = HeadTile(64, 128, 64, 32, 8, 3)

# Interpreter: small tiles (every tile op is a numpy call); GROUP_N 3 so that small test shapes have partial
# last groups.
INTERPRETER_TILE = HeadTile(16, 32, 32, 3, 4, 1)

# Larger tiles read fewer operand bytes per MMA FLOP from L2 ((BN + BV) / (BN * BV) per element): 128x128 is
# 1.5x the default's arithmetic intensity, 64x256 1.6x, 128x256 2x. GROUP_N keeps a group's hidden rows near
# 15 MB. Per kernel, because their register needs differ (sm_90 static check, bf16): the forward keeps the
# online-softmax state and the entropy terms of a whole tile live, so 128x256 spills there at 8 warps (200 B)
# and at 16 (168 B, 128-register cap), and 128x128x64 with 4 stages spills 8 B; the backward recompute
# holds one tile and compiles 128x256 at 16 warps without spilling on sm_90 (sm_80, 448 B: sm_90 only, where
# wgmma accumulates in registers of 4 warpgroups). Every backward candidate keeps
# BLOCK_H = 64: a dz element then sums the same K steps in the same order under any of them.
AUTOTUNE_TILES: dict[str, tuple[HeadTile, ...]] = {
    "stats": (
        DEFAULT_TILE,
        HeadTile(128, 128, 64, 16, 8, 3),
        HeadTile(64, 256, 64, 32, 8, 3),
        HeadTile(64, 256, 64, 32, 8, 4),
        HeadTile(128, 128, 32, 16, 8, 4),
    ),
    "dz": (
        DEFAULT_TILE,
        HeadTile(128, 128, 64, 16, 8, 3),
        HeadTile(64, 256, 64, 32, 8, 3),
        HeadTile(128, 256, 64, 16, 16, 3, min_capability=90),
    ),
}


def autotune_requested() -> bool:
    """PRIMEFLOW_KERNEL_AUTOTUNE: '1' tunes, '0' or unset keeps DEFAULT_TILE; anything else is an error."""
    value = os.environ.get(AUTOTUNE_ENV, "0").strip()
    if value not in ("0", "1"):
        raise ValueError(f"{AUTOTUNE_ENV}={value!r}: allowed values are 0 (fixed tiles, the default) and 1 "
                         "(autotune the bf16/fp16 fused head on CUDA)")
    return value == "1"


def autotunes(hidden_NH: torch.Tensor, interpreted: bool) -> bool:
    """Whether this launch goes through the autotuner: requested, compiled CUDA, bf16/fp16 operands."""
    return (autotune_requested() and hidden_NH.is_cuda and not interpreted
            and hidden_NH.dtype in (torch.bfloat16, torch.float16))


def device_limits(device: torch.device) -> tuple[int, int]:
    """(opt-in shared memory per block: 227 KB on H100/H200, 163 KB on A100; compute capability x10)."""
    props = torch.cuda.get_device_properties(device)
    return props.shared_memory_per_block_optin, 10 * props.major + props.minor


def fitting_tiles(tiles: tuple[HeadTile, ...], elt_bytes: int, shared_limit: int,
                  capability: int = 90) -> list[HeadTile]:
    """The tiles whose operand buffers fit `shared_limit` and that compile well for `capability`; never
    empty (DEFAULT_TILE fits every target the static check covers, and stays as the last resort)."""
    fit = [t for t in tiles if t.operand_shared_bytes(elt_bytes) <= shared_limit and t.min_capability <= capability]
    return fit or [DEFAULT_TILE]


def triton_configs(tiles: tuple[HeadTile, ...]) -> list:
    import triton
    return [triton.Config(t.constexprs(), num_warps=t.num_warps, num_stages=t.num_stages) for t in tiles]


def tile_of(config, candidates: tuple[HeadTile, ...] | None = None) -> HeadTile:
    """The HeadTile of `candidates` (default: every AUTOTUNE_TILES entry) a triton.Config of triton_configs
    was made from."""
    kw = config.kwargs
    key = (kw["BLOCK_N"], kw["BLOCK_V"], kw["BLOCK_H"], kw["GROUP_N"], config.num_warps, config.num_stages)
    pool = candidates or tuple(t for ts in AUTOTUNE_TILES.values() for t in ts)
    return next(t for t in pool if (t.block_n, t.block_v, t.block_h, t.group_n, t.num_warps, t.num_stages) == key)


def prune_by_shared_memory(configs: list, named_args: dict, **_launch) -> list:
    """Triton autotuner early_config_prune: drop the configs whose operand buffers exceed this device's
    shared memory per block (the launch would fail with 'out of resource: shared memory') and those that
    spill on this compute capability."""
    hidden = named_args["h_ptr"]
    shared_limit, capability = device_limits(hidden.device)
    keep = fitting_tiles(tuple(tile_of(c) for c in configs), hidden.element_size(), shared_limit, capability)
    return [c for c in configs if tile_of(c) in keep]


def describe() -> dict:
    """The tiling state a benchmark or smoke run records."""
    return {"autotune": autotune_requested(), "default": asdict(DEFAULT_TILE),
            "candidates": {k: [t.label() for t in v] for k, v in AUTOTUNE_TILES.items()},
            "cols_per_split": COLS_PER_SPLIT_CUDA}
