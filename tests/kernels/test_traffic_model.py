"""kernels/traffic_model.py on hand-computable cases, and the grouped order's effect at the 7B head shape.

Small shape: N=1024 rows (16 row blocks of 64), H=64, V=512 (4 tiles of 128, 2 splits of 256), bf16:
hidden = 1024*64*2 = 128 KiB, weight = 512*64*2 = 64 KiB, a row block 8 KiB, a weight tile 16 KiB.
An L2 of 56 KiB is smaller than hidden but holds a group of 2 row blocks plus the tiles they stream.
"""

from __future__ import annotations

import pytest
from primeflow.kernels import traffic_model as tm

SMALL = tm.Shape("small", 1024, 64, 512)
TILES = tm.Tiles(block_n=64, block_v=128, cols_per_split=256, group_n=2, dz_cols_per_chunk=512)
HIDDEN, WEIGHT = 1024 * 64 * 2, 512 * 64 * 2
N_TILES, N_GROUPS = 4, 8
SMALL_L2 = 56 << 10


def _read(kernel: str, order: str, resident: int, l2: int) -> tm.Traffic:
    return tm.simulate(tm.launches(kernel, order, SMALL, TILES)[0], resident, l2)


@pytest.mark.parametrize("kernel,order", [("linear_stats_fwd", "rows_fastest"), ("linear_stats_fwd", "grouped"),
                                          ("linear_dz", "rows_fastest"), ("linear_dz", "grouped"),
                                          ("prime_rewards", "as_is"), ("prime_rewards", "split_grouped")])
@pytest.mark.parametrize("resident", [1, 4, 32])
def test_everything_fits_in_l2_reads_each_operand_once(kernel, order, resident):
    models = 3 if kernel == "prime_rewards" else 1
    assert _read(kernel, order, resident, 1 << 30).read_bytes == models * (HIDDEN + WEIGHT)


def test_rows_fastest_with_hidden_over_l2_rereads_hidden_per_vocab_tile():
    """All 32 forward programs resident (16 row blocks x 2 splits): at each tile step the wave touches all of
    hidden, which does not fit, while the programs of one split share each weight tile."""
    assert _read("linear_stats_fwd", "rows_fastest", 32, SMALL_L2).read_bytes == N_TILES * HIDDEN + WEIGHT
    assert _read("linear_dz", "rows_fastest", 32, SMALL_L2).read_bytes == N_TILES * HIDDEN + WEIGHT
    # prime_rewards streams each of its 3 models' full vocabulary per row block: the same, per model
    assert _read("prime_rewards", "as_is", 16, SMALL_L2).read_bytes == 3 * (N_TILES * HIDDEN + WEIGHT)


def test_grouped_reads_hidden_once_and_weight_once_per_group():
    """One group (2 row blocks) per wave: its hidden rows stay in L2 while it walks the vocabulary, and the
    next group streams the weight again."""
    assert _read("linear_stats_fwd", "grouped", 2 * 2, SMALL_L2).read_bytes == HIDDEN + N_GROUPS * WEIGHT
    assert _read("linear_dz", "grouped", 2 * N_TILES, SMALL_L2).read_bytes == HIDDEN + N_GROUPS * WEIGHT


def test_writes_and_l2_to_sm_bytes():
    traffic = _read("linear_dz", "grouped", 8, SMALL_L2)
    assert traffic.write_bytes == 1024 * 512 * 2  # dz in bf16, written once
    # every program reads its row block and weight tile once, hit or miss
    assert traffic.l2_to_sm_bytes == 16 * N_TILES * (8 << 10) + 16 * N_TILES * (16 << 10)
    fwd = _read("linear_stats_fwd", "rows_fastest", 32, SMALL_L2)
    assert fwd.write_bytes == 2 * 1024 * 16  # 4 fp32 partials per row and split


def test_grouped_order_matches_the_kernel_mirror_and_partial_groups():
    order = tm.grouped_order(5, 3, 2)
    assert sorted(order) == [(rb, c) for rb in range(5) for c in range(3)]
    assert order[:6] == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]
    assert order[12:] == [(4, 0), (4, 1), (4, 2)]  # the last group holds one row block
    assert tm.grouped_order(5, 3, 5) == [(p % 5, p // 5) for p in range(15)]  # rows fastest


def test_estimate_roofline():
    gpu = tm.Gpu("test", sms=2, l2_bytes=1 << 30, hbm_bytes_per_s=1e9, peak_flops=1e12)
    traffic = tm.Traffic(read_bytes=3_000_000, write_bytes=1_000_000, l2_to_sm_bytes=0)
    est = tm.estimate("linear_stats_fwd", "grouped", SMALL, gpu, TILES, 2, traffic)
    flops = 2 * 1024 * 64 * 512
    assert est.flops == flops and est.resident_programs == 4
    assert est.compute_ms == pytest.approx(flops / 1e12 * 1e3)
    assert est.memory_ms == pytest.approx(4.0)  # 4 MB at 1 GB/s
    assert est.time_ms == pytest.approx(4.0) and est.bound == "HBM"
    assert est.pct_of_peak == pytest.approx(100 * est.compute_ms / 4.0)
    assert est.read_bytes_per_flop == pytest.approx(3_000_000 / flops)


def test_grouped_order_cuts_modelled_traffic_at_the_7b_head():
    """N=16384, H=3584, V=152064 bf16 on an H100 (50 MiB L2, 132 SMs x 2 programs, static_check's sm_90
    occupancy of the forward): rows-fastest touches all of hidden (117 MB) for every one of the 1188 vocab
    tiles; grouped reads it about once and the weight once per group."""
    shape, gpu = tm.SHAPES[0], tm.GPUS[0]
    assert (shape.n_rows, shape.hidden, shape.vocab) == (16384, 3584, 152064)
    tiles = tm.gpu_tiles(shape.n_rows)
    resident = gpu.sms * 2
    old = tm.simulate(tm.launches("linear_stats_fwd", "rows_fastest", shape, tiles)[0], resident, gpu.l2_bytes)
    new = tm.simulate(tm.launches("linear_stats_fwd", "grouped", shape, tiles)[0], resident, gpu.l2_bytes)
    hidden = shape.n_rows * shape.hidden * 2
    weight = shape.vocab * shape.hidden * 2
    n_tiles = -(-4096 // 128) * (shape.vocab // 4096) + -(-(shape.vocab % 4096) // 128)
    assert old.read_bytes == pytest.approx(n_tiles * hidden, rel=0.05)
    assert new.read_bytes < old.read_bytes / 10
    # hidden once, the weight once per group, plus one split's weight per wave: a wave of 264 programs covers
    # 8.25 splits of a 32-row-block group, so the split it cuts is streamed by two waves
    n_groups = -(-shape.n_rows // (tiles.block_n * tiles.group_n))
    n_waves = -(-(shape.n_rows // tiles.block_n) * -(-shape.vocab // 4096) // resident)
    split_weight = 4096 * shape.hidden * 2
    assert hidden + n_groups * weight < new.read_bytes <= hidden + n_groups * weight + n_waves * split_weight
    flops = 2.0 * shape.n_rows * shape.hidden * shape.vocab
    assert (old.read_bytes + old.write_bytes) / gpu.hbm_bytes_per_s > flops / gpu.peak_flops  # HBM-bound
    assert (new.read_bytes + new.write_bytes) / gpu.hbm_bytes_per_s < flops / gpu.peak_flops  # compute-bound


def test_tile_sweep_models_every_candidate_and_its_l2_to_sm_intensity():
    """tile_sweep (the autotune candidates' table) at a mid-size shape: one row per (kernel, candidate), the
    default's row equal to the grouped row of the same kernel, and L2->SM bytes per FLOP the analytic
    (BN + BV) e / (2 BN BV) of the tile (within edge tiles' share: rows and columns here are multiples of
    every tile), so the larger tiles' halved operand traffic is what the table shows."""
    from primeflow.kernels.linear_logprob.tiles import AUTOTUNE_TILES, DEFAULT_TILE
    shape, gpu = tm.Shape("mid", 2048, 256, 16384), tm.GPUS[0]
    rows = tm.tile_sweep(shape, gpu)
    assert [(r["kernel"], r["tile"]) for r in rows] == [
        ({"stats": "linear_stats_fwd", "dz": "linear_dz"}[k], t.label())
        for k, ts in AUTOTUNE_TILES.items() for t in ts]
    by_label = {t.label(): t for ts in AUTOTUNE_TILES.values() for t in ts}
    for r in rows:
        t = by_label[r["tile"]]
        intensity = (t.block_n + t.block_v) * 2 / (2 * t.block_n * t.block_v)
        assert r["l2_to_sm_bytes_per_flop"] == pytest.approx(intensity)
        assert r["programs_per_sm"] == tm.ASSUMED_PROGRAMS_PER_SM
    for kernel in ("linear_stats_fwd", "linear_dz"):
        default = next(r for r in rows if r["kernel"] == kernel and r["tile"] == DEFAULT_TILE.label())
        grouped = tm.estimate(kernel, "grouped", shape, gpu, tm.gpu_tiles(shape.n_rows), tm.ASSUMED_PROGRAMS_PER_SM)
        assert default["hbm_read_gb"] == pytest.approx(grouped.hbm_read_bytes / 1e9)
    smallest = min(r["l2_to_sm_bytes_per_flop"] for r in rows)
    assert smallest == pytest.approx(rows[0]["l2_to_sm_bytes_per_flop"] / 2)  # 128x256 vs 64x128
