"""Fused-head tile selection (kernels/linear_logprob/tiles.py): the opt-in switch, when a launch may go
through the autotuner, shared-memory pruning, and the candidates' invariants. The candidates' results are
checked against float64 in test_program_order.py (interpreter) and their sm_90 compilation in
test_static_check.py."""

from __future__ import annotations

import pytest
import torch
from primeflow.kernels.linear_logprob import tiles
from primeflow.kernels.linear_logprob.tiles import (
    AUTOTUNE_ENV,
    AUTOTUNE_TILES,
    COLS_PER_SPLIT_CUDA,
    DEFAULT_TILE,
    HeadTile,
)


@pytest.mark.parametrize("value,expected", [(None, False), ("0", False), ("1", True), (" 1 ", True)])
def test_autotune_switch(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv(AUTOTUNE_ENV, raising=False)
    else:
        monkeypatch.setenv(AUTOTUNE_ENV, value)
    assert tiles.autotune_requested() is expected


@pytest.mark.parametrize("value", ["yes", "true", "2", ""])
def test_autotune_switch_refuses_other_values_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv(AUTOTUNE_ENV, value)
    with pytest.raises(ValueError, match=rf"{AUTOTUNE_ENV}=.*allowed values are 0 .* and 1"):
        tiles.autotune_requested()


class _FakeCuda:
    """A stand-in with the two attributes autotunes() reads (no CUDA here)."""

    def __init__(self, dtype: torch.dtype):
        self.is_cuda, self.dtype = True, dtype


@pytest.mark.parametrize("dtype,interpreted,expected", [
    (torch.bfloat16, False, True), (torch.float16, False, True),
    (torch.float32, False, False),  # fp32: the exactness setting keeps DEFAULT_TILE
    (torch.bfloat16, True, False),  # the interpreter never tunes
])
def test_autotunes_only_compiled_cuda_half_precision(monkeypatch, dtype, interpreted, expected):
    monkeypatch.setenv(AUTOTUNE_ENV, "1")
    assert tiles.autotunes(_FakeCuda(dtype), interpreted) is expected
    monkeypatch.setenv(AUTOTUNE_ENV, "0")
    assert tiles.autotunes(_FakeCuda(dtype), interpreted) is False
    assert tiles.autotunes(torch.zeros(1, dtype=dtype), False) is False  # a CPU tensor


def test_operand_shared_bytes_is_the_operand_ring():
    # 3 stages x (64 + 128) rows x 64 columns x 2 bytes: what sm_90 bf16 compiles to (test_static_check)
    assert DEFAULT_TILE.operand_shared_bytes(2) == 73728
    assert HeadTile(128, 256, 64, 16, 8, 4).operand_shared_bytes(4) == 4 * 384 * 64 * 4


@pytest.mark.parametrize("kernel", sorted(AUTOTUNE_TILES))
@pytest.mark.parametrize("limit", [0, 73727, 73728, 100 * 1024, 163 * 1024, 227 * 1024])
@pytest.mark.parametrize("elt_bytes", [2, 4])
def test_fitting_tiles_keeps_exactly_those_within_the_limit(kernel, limit, elt_bytes):
    candidates = AUTOTUNE_TILES[kernel]
    kept = tiles.fitting_tiles(candidates, elt_bytes, limit)
    fits = [t for t in candidates if t.operand_shared_bytes(elt_bytes) <= limit]
    assert kept == (fits or [DEFAULT_TILE])
    assert kept  # never empty: the autotuner refuses an empty set
    if 0 < len(fits) < len(candidates):
        assert len(kept) < len(candidates)  # the limit bites: something was dropped


@pytest.mark.parametrize("kernel", sorted(AUTOTUNE_TILES))
def test_every_bf16_candidate_fits_a100_and_h100(kernel):
    for limit in (163 * 1024, 227 * 1024):
        assert tiles.fitting_tiles(AUTOTUNE_TILES[kernel], 2, limit) == list(AUTOTUNE_TILES[kernel])


def test_fitting_tiles_drops_the_tiles_that_spill_below_their_capability():
    sm90_only = [t for t in AUTOTUNE_TILES["dz"] if t.min_capability == 90]
    assert sm90_only  # 128x256 at 16 warps spills on sm_80 (tiles.py)
    on_a100 = tiles.fitting_tiles(AUTOTUNE_TILES["dz"], 2, 163 * 1024, capability=80)
    assert on_a100 == [t for t in AUTOTUNE_TILES["dz"] if t.min_capability <= 80]
    assert not set(sm90_only) & set(on_a100)
    assert tiles.fitting_tiles(AUTOTUNE_TILES["dz"], 2, 227 * 1024, capability=90) == list(AUTOTUNE_TILES["dz"])


@pytest.mark.parametrize("capability", [80, 90])
def test_prune_by_shared_memory_reads_the_device_limits_and_the_operand_dtype(monkeypatch, capability):
    seen = []

    def limits(device):
        seen.append(device)
        return 100 * 1024, capability

    monkeypatch.setattr(tiles, "device_limits", limits)
    for kernel, candidates in AUTOTUNE_TILES.items():
        configs = tiles.triton_configs(candidates)
        hidden = torch.zeros(2, 2, dtype=torch.bfloat16)
        kept = tiles.prune_by_shared_memory(configs, {"h_ptr": hidden}, num_warps=None)
        assert [tiles.tile_of(c) for c in kept] == [
            t for t in candidates if t.operand_shared_bytes(2) <= 100 * 1024 and t.min_capability <= capability]
        assert 1 < len(kept) < len(configs), kernel
        assert seen[-1] == hidden.device
        # fp32 operands: none fits 100 KB (the default needs 147456 B); the last resort
        assert [tiles.tile_of(c) for c in tiles.prune_by_shared_memory(configs, {"h_ptr": hidden.float()})] == \
            [DEFAULT_TILE]


@pytest.mark.parametrize("kernel", sorted(AUTOTUNE_TILES))
def test_triton_configs_round_trip(kernel):
    candidates = AUTOTUNE_TILES[kernel]
    configs = tiles.triton_configs(candidates)
    assert [tiles.tile_of(c) for c in configs] == list(candidates)
    assert [tiles.tile_of(c, candidates) for c in configs] == list(candidates)
    assert all(c.num_warps == t.num_warps and c.num_stages == t.num_stages
               for c, t in zip(configs, candidates, strict=True))


@pytest.mark.parametrize("kernel", sorted(AUTOTUNE_TILES))
def test_candidates(kernel):
    candidates = AUTOTUNE_TILES[kernel]
    assert candidates[0] == DEFAULT_TILE and len(set(candidates)) == len(candidates)
    for t in candidates:
        for size in (t.block_n, t.block_v, t.block_h):  # tl.arange and wgmma shapes need powers of two >= 16
            assert size >= 16 and size & (size - 1) == 0, t
        # a split is whole tiles: no masked, half-empty tile at every split's end
        assert COLS_PER_SPLIT_CUDA % t.block_v == 0, t
    if kernel == "dz":  # the backward's dz sums the same K steps under every candidate (tiles.py)
        assert {t.block_h for t in candidates} == {DEFAULT_TILE.block_h}
    assert tiles.describe()["candidates"][kernel] == [t.label() for t in candidates]


@pytest.mark.parametrize("kernel,key", [("stats", ["H", "V"]), ("dz", ["H"])])
def test_the_launchers_autotuner_is_triton_s_over_the_candidates(monkeypatch, kernel, key):
    """What a CUDA launch under PRIMEFLOW_KERNEL_AUTOTUNE=1 goes through (built here, not run: no GPU):
    Triton's autotune over this kernel's candidates, keyed as tiles.py says (the backward not on its chunk
    width V), pruned by shared memory, timings cached on disk so a resumed run picks the same tiles. The
    arguments are captured (Triton itself turns the disk cache off in an interpreted process)."""
    import triton
    from primeflow.kernels.linear_logprob import triton_op
    from triton.runtime.autotuner import Autotuner

    calls = []
    real = triton.autotune

    def spy(**kwargs):
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(triton, "autotune", spy)
    triton_op._autotuned.cache_clear()
    try:
        tuner = triton_op._autotuned(kernel)
        assert triton_op._autotuned(kernel) is tuner  # one autotuner (and its in-process cache) per kernel
    finally:
        triton_op._autotuned.cache_clear()
    (kwargs,) = calls
    assert isinstance(tuner, Autotuner) and tuner.keys == key == kwargs["key"]
    assert [tiles.tile_of(c) for c in tuner.configs] == list(AUTOTUNE_TILES[kernel])
    assert kwargs["prune_configs_by"] == {"early_config_prune": tiles.prune_by_shared_memory}
    assert kwargs["cache_results"] is True
    assert tuner.fn is {"stats": triton_op.linear_stats_fwd_kernel, "dz": triton_op.linear_dz_kernel}[kernel]
