"""Traffic model of the fused-head kernels: HBM bytes under a program order, bytes per GEMM FLOP, estimated time.

    python -m primeflow.kernels.traffic_model [--json bench/results/traffic_model_7b_head.json]
                                              [--programs-per-sm K]

Kernels: linear_stats_fwd_kernel (forward; grid row blocks x COLS_PER_SPLIT vocab splits, each program
streams its split's BLOCK_V tiles), linear_dz_kernel (backward recompute; one BLOCK_N x BLOCK_V tile per
program, vocab chunks from triton_op.grad_chunking), prime_rewards_kernel (one program per BLOCK_N rows
streaming each model's full vocabulary, no split: what prime_token_rewards runs when V fits one split).
Tiles are linear_logprob.triton_op.tile_config's on CUDA; tile_sweep models each autotune candidate
(linear_logprob/tiles.py) of the first two.
Orders: "rows_fastest" (the former 2-D grids: row blocks fastest) and "grouped" (kernel.py's _grouped_tile,
GROUP_N row blocks walk the vocab dimension before the next group). prime_rewards has one order (its grid
has no vocab dimension).

Assumptions (the model compares tilings and program orders; it is not a timing):
1. Scheduling: programs run in waves of R = SMs x programs-per-SM consecutive program ids, a wave starting
   when the previous one has finished (uniform programs). Programs per SM: static_check's occupancy at sm_90
   (registers, shared memory, warps per SM) when the kernels compile here, else ASSUMED_PROGRAMS_PER_SM
   (the output says which).
2. Lockstep inside a wave: at step t every program of the wave, in program-id order, reads the blocks of its
   t-th logits tile: its BLOCK_N x H hidden rows and the BLOCK_V x H weight tile (its K loop reads both
   whole; the forward re-reads its hidden rows for every tile of its split).
3. L2: one fully associative LRU cache of the given capacity (H100 and H200: 50 MiB), block granularity,
   shared by all SMs. A miss reads the block from HBM, a hit is free. H100's L2 is two partitions; ignoring
   that is optimistic for working sets near the capacity (why GROUP_N keeps a group under a third of it).
4. Writes (dz tiles, per-split partials, per-row outputs) go to HBM once and allocate in L2 (they evict);
   the per-row vectors a program reads (labels, max, lse, upstream grads) are ignored (O(N) bytes).
5. Backward: only linear_dz_kernel (recompute + dz written in bf16, triton_op.dz_dtype on CUDA); the dh and
   dW GEMMs that read dz (cuBLAS) are not counted.
6. prime_rewards: three models (policy, PRM, reference) of the same shape, each with its own hidden and
   weight. "as_is" is the one-launch kernel; "split_grouped" is what prime_token_rewards runs for a
   vocabulary wider than one split (prime_rewards/sharded.split_forward: each model's linear_stats_fwd launch,
   COLS_PER_SPLIT splits in the grouped order), modelled as one three-model launch with those splits.
7. FLOPs: 2 N H V per model (the logits GEMM). Time = max(FLOPs / peak dense bf16, HBM bytes read and
   written / HBM bandwidth): a roofline assuming MMAs at peak and perfectly overlapped transfers. It ignores
   L2->SM bandwidth (reported as l2_to_sm bytes per FLOP, no L2 bandwidth assumed), the exp epilogue,
   wave tails and launches, so "% of peak" is an upper bound saying whether HBM traffic is the limit.
Hardware: H100 SXM 989 TFLOP/s dense bf16, 3.35 TB/s; H200 989 TFLOP/s, 4.8 TB/s; both 132 SMs, 50 MiB L2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ASSUMED_PROGRAMS_PER_SM = 2  # used when static_check cannot compile here (e.g. under TRITON_INTERPRET=1)
ORDERS = ("rows_fastest", "grouped")
KERNELS = ("linear_stats_fwd", "linear_dz", "prime_rewards")


@dataclass(frozen=True)
class Shape:
    name: str
    n_rows: int
    hidden: int
    vocab: int
    elt_bytes: int = 2  # bf16 hidden and weight


@dataclass(frozen=True)
class Gpu:
    name: str
    sms: int
    l2_bytes: int
    hbm_bytes_per_s: float
    peak_flops: float


@dataclass(frozen=True)
class Tiles:
    block_n: int
    block_v: int
    cols_per_split: int
    group_n: int
    dz_cols_per_chunk: int  # vocab columns per linear_dz launch (triton_op.grad_chunking)
    dz_elt_bytes: int = 2


SHAPES = (Shape("qwen2.5-7b head", 16384, 3584, 152064), Shape("qwen2.5-0.5b head", 16384, 896, 151936))
GPUS = (Gpu("H100 SXM", 132, 50 << 20, 3.35e12, 989e12), Gpu("H200", 132, 50 << 20, 4.8e12, 989e12))


def gpu_tiles(n_rows: int) -> Tiles:
    """The tiles the CUDA launchers use (tile_config, grad_chunking) at n_rows rows."""
    import torch

    from .linear_logprob.triton_op import grad_chunking, tile_config
    cfg = tile_config(torch.device("cuda"))
    return Tiles(cfg["BLOCK_N"], cfg["BLOCK_V"], cfg["COLS_PER_SPLIT"], cfg["GROUP_N"],
                 grad_chunking(n_rows, torch.device("cuda"))[1])


def grouped_order(n_row_blocks: int, n_cols: int, group_n: int) -> list[tuple[int, int]]:
    """(row block, column) of each program id: the Python mirror of kernel.py's _grouped_tile
    (tests/kernels/test_program_order.py checks they agree). group_n >= n_row_blocks: rows fastest."""
    out = []
    for pid in range(n_row_blocks * n_cols):
        per_group = group_n * n_cols
        first = (pid // per_group) * group_n
        size = min(n_row_blocks - first, group_n)
        local = pid % per_group
        out.append((first + local % size, local // size))
    return out


Read = tuple[tuple, int]  # (block key, bytes)


@dataclass(frozen=True)
class Program:
    steps: list[list[Read]]  # per logits tile, the blocks read
    writes: list[Read]  # written after the last step


@dataclass(frozen=True)
class Launch:
    n_programs: int
    program: Callable[[int], Program]


@dataclass(frozen=True)
class Traffic:
    read_bytes: int  # from HBM
    write_bytes: int  # to HBM
    l2_to_sm_bytes: int  # every block read, hit or miss


class _Lru:
    """Fully associative LRU over blocks; read() returns the HBM bytes the read costs."""

    def __init__(self, capacity: int):
        self.capacity, self.used, self.blocks = capacity, 0, OrderedDict()

    def read(self, key: tuple, nbytes: int) -> int:
        if key in self.blocks:
            self.blocks.move_to_end(key)
            return 0
        self.insert(key, nbytes)
        return nbytes

    def insert(self, key: tuple, nbytes: int) -> None:
        if nbytes > self.capacity:  # streams through
            return
        self.blocks[key] = nbytes
        self.used += nbytes
        while self.used > self.capacity:
            self.used -= self.blocks.popitem(last=False)[1]


def simulate(launches: list[Launch], resident: int, l2_bytes: int) -> Traffic:
    """HBM traffic of the launches (in order, L2 kept between them) under assumptions 1-4."""
    cache = _Lru(l2_bytes)
    read = written = touched = 0
    for launch in launches:
        for w0 in range(0, launch.n_programs, resident):
            wave = [launch.program(p) for p in range(w0, min(w0 + resident, launch.n_programs))]
            for t in range(max(len(p.steps) for p in wave)):
                for prog in wave:
                    for key, nbytes in prog.steps[t] if t < len(prog.steps) else ():
                        read += cache.read(key, nbytes)
                        touched += nbytes
            for prog in wave:
                for key, nbytes in prog.writes:
                    cache.insert(key, nbytes)
                    written += nbytes
    return Traffic(read, written, touched)


def _col_ranges(lo: int, hi: int, width: int) -> Iterator[tuple[int, int]]:
    for c in range(lo, hi, width):
        yield c, min(width, hi - c)


def streaming_launch(shape: Shape, tiles: Tiles, group_n: int, cols_per_split: int, n_models: int,
                     out_bytes_per_row: int) -> Launch:
    """Programs (row block, split) in grouped order that stream the split's BLOCK_V tiles of each model in
    turn: linear_stats_fwd (1 model, COLS_PER_SPLIT) and prime_rewards (3 models; the full V as one split for
    the one-launch kernel)."""
    bn, h, e = tiles.block_n, shape.hidden, shape.elt_bytes
    n_rb = -(-shape.n_rows // bn)
    n_splits = -(-shape.vocab // cols_per_split)
    order = grouped_order(n_rb, n_splits, group_n)

    def program(pid: int) -> Program:
        rb, split = order[pid]
        rows = min(bn, shape.n_rows - rb * bn)
        lo = split * cols_per_split
        steps = [[(("h", m, rb), rows * h * e), (("w", m, c), cols * h * e)]
                 for m in range(n_models)
                 for c, cols in _col_ranges(lo, min(lo + cols_per_split, shape.vocab), tiles.block_v)]
        return Program(steps, [(("out", split, rb), rows * out_bytes_per_row)])

    return Launch(len(order), program)


def dz_launches(shape: Shape, tiles: Tiles, group_n: int) -> list[Launch]:
    """linear_dz: one launch per vocab chunk, programs (row block, tile) in grouped order, dz tile written."""
    bn, bv, h, e = tiles.block_n, tiles.block_v, shape.hidden, shape.elt_bytes
    n_rb = -(-shape.n_rows // bn)
    out = []
    for c0, width in _col_ranges(0, shape.vocab, tiles.dz_cols_per_chunk):
        n_tiles = -(-width // bv)
        order = grouped_order(n_rb, n_tiles, group_n)

        def program(pid: int, c0: int = c0, width: int = width, order: list = order) -> Program:
            rb, t = order[pid]
            rows, cols = min(bn, shape.n_rows - rb * bn), min(bv, width - t * bv)
            col = c0 + t * bv
            return Program([[(("h", 0, rb), rows * h * e), (("w", 0, col), cols * h * e)]],
                           [(("dz", rb, col), rows * cols * tiles.dz_elt_bytes)])

        out.append(Launch(len(order), program))
    return out


def launches(kernel: str, order: str, shape: Shape, tiles: Tiles) -> tuple[list[Launch], int]:
    """(launches, models) of `kernel` under `order` ("rows_fastest", "grouped"; prime_rewards: "as_is", the
    one-launch kernel, or "split_grouped", the vocab-split path)."""
    n_rb = -(-shape.n_rows // tiles.block_n)
    group = {"rows_fastest": n_rb, "grouped": tiles.group_n, "as_is": n_rb, "split_grouped": tiles.group_n}[order]
    if kernel == "linear_stats_fwd":
        return [streaming_launch(shape, tiles, group, tiles.cols_per_split, 1, 16)], 1  # 4 fp32 partials
    if kernel == "linear_dz":
        return dz_launches(shape, tiles, group), 1
    if kernel == "prime_rewards":
        split = shape.vocab if order == "as_is" else tiles.cols_per_split
        return [streaming_launch(shape, tiles, group, split, 3, 24)], 3  # logp x3, PRM max/lse, reward
    raise ValueError(f"unknown kernel {kernel!r}")


@dataclass(frozen=True)
class Estimate:
    kernel: str
    order: str
    shape: str
    gpu: str
    resident_programs: int
    flops: float
    hbm_read_bytes: int
    hbm_write_bytes: int
    l2_to_sm_bytes: int
    read_bytes_per_flop: float
    l2_to_sm_bytes_per_flop: float
    compute_ms: float
    memory_ms: float
    time_ms: float
    pct_of_peak: float
    bound: str


def estimate(kernel: str, order: str, shape: Shape, gpu: Gpu, tiles: Tiles, programs_per_sm: int,
             traffic: Traffic | None = None) -> Estimate:
    """Roofline estimate of one kernel pass (assumption 7); `traffic` reuses a simulation (same L2 and R)."""
    work, n_models = launches(kernel, order, shape, tiles)
    resident = gpu.sms * programs_per_sm
    traffic = traffic or simulate(work, resident, gpu.l2_bytes)
    flops = 2.0 * shape.n_rows * shape.hidden * shape.vocab * n_models
    compute_s = flops / gpu.peak_flops
    memory_s = (traffic.read_bytes + traffic.write_bytes) / gpu.hbm_bytes_per_s
    time_s = max(compute_s, memory_s)
    return Estimate(kernel, order, shape.name, gpu.name, resident, flops, traffic.read_bytes, traffic.write_bytes,
                    traffic.l2_to_sm_bytes, traffic.read_bytes / flops, traffic.l2_to_sm_bytes / flops,
                    compute_s * 1e3, memory_s * 1e3, time_s * 1e3, 100.0 * compute_s / time_s,
                    "compute" if compute_s >= memory_s else "HBM")


def static_check_occupancy(arch: int = 90) -> dict[str, int]:
    """Programs per SM of each kernel's bf16 variant from static_check (compiles; no GPU needed)."""
    from . import static_check
    labels = {"linear_stats_fwd": "linear_stats_fwd[bf16", "linear_dz": "linear_dz[bf16",
              "prime_rewards": "prime_rewards[bf16,linear"}
    specs = static_check.specs()
    out = {}
    for kernel, prefix in labels.items():
        spec = next(s for s in specs if s.label.startswith(prefix))
        out[kernel] = static_check.compile_one(spec, arch).programs_per_sm
    return out


def model_table(programs_per_sm: dict[str, int], shapes: tuple[Shape, ...] = SHAPES,
                gpus: tuple[Gpu, ...] = GPUS) -> list[Estimate]:
    rows = []
    for shape in shapes:
        tiles = gpu_tiles(shape.n_rows)
        for kernel in KERNELS:
            orders = ("as_is", "split_grouped") if kernel == "prime_rewards" else ORDERS
            for order in orders:
                cache: dict[tuple[int, int], Traffic] = {}
                for gpu in gpus:
                    key = (gpu.l2_bytes, gpu.sms * programs_per_sm[kernel])
                    if key not in cache:
                        cache[key] = simulate(launches(kernel, order, shape, tiles)[0], key[1], key[0])
                    rows.append(estimate(kernel, order, shape, gpu, tiles, programs_per_sm[kernel], cache[key]))
    return rows


def group_sweep(shape: Shape, gpu: Gpu, programs_per_sm: int, groups: tuple[int, ...]) -> list[dict]:
    """linear_stats_fwd's modelled HBM reads per GROUP_N (why tile_config's GROUP_N)."""
    tiles = gpu_tiles(shape.n_rows)
    out = []
    for g in groups:
        t = replace(tiles, group_n=g)
        traffic = simulate(launches("linear_stats_fwd", "grouped", shape, t)[0], gpu.sms * programs_per_sm,
                           gpu.l2_bytes)
        out.append({"group_n": g, "group_hidden_mb": g * t.block_n * shape.hidden * shape.elt_bytes / 1e6,
                    "hbm_read_gb": traffic.read_bytes / 1e9})
    return out


def tile_sweep(shape: Shape, gpu: Gpu, programs_per_sm: dict[tuple[str, str], int] | None = None) -> list[dict]:
    """Each autotune candidate (linear_logprob/tiles.py) of linear_stats_fwd and linear_dz, grouped order, at
    `shape` on `gpu`: modelled HBM traffic, L2->SM bytes per FLOP (the operand bytes the tile's MMAs read per
    FLOP, (BN + BV) e / (2 BN BV) up to edge tiles: what a larger tile halves) and the roofline estimate.
    `programs_per_sm` maps (kernel, tile label) to resident programs (static_check), else
    ASSUMED_PROGRAMS_PER_SM."""
    from .linear_logprob.tiles import AUTOTUNE_TILES
    base = gpu_tiles(shape.n_rows)
    names = {"stats": "linear_stats_fwd", "dz": "linear_dz"}
    out = []
    for kernel, candidates in AUTOTUNE_TILES.items():
        for tile in candidates:
            tiles = replace(base, block_n=tile.block_n, block_v=tile.block_v, group_n=tile.group_n)
            per_sm = (programs_per_sm or {}).get((kernel, tile.label()), ASSUMED_PROGRAMS_PER_SM)
            est = estimate(names[kernel], "grouped", shape, gpu, tiles, per_sm)
            out.append({"kernel": names[kernel], "tile": tile.label(), "programs_per_sm": per_sm,
                        "hbm_read_gb": est.hbm_read_bytes / 1e9, "hbm_write_gb": est.hbm_write_bytes / 1e9,
                        "l2_to_sm_bytes_per_flop": est.l2_to_sm_bytes_per_flop, "est_ms": est.time_ms,
                        "pct_of_peak": est.pct_of_peak, "bound": est.bound})
    return out


def candidate_occupancy(arch: int = 90) -> dict[tuple[str, str], int]:
    """Programs per SM of every autotune candidate's bf16 kernel from static_check (compiles; no GPU)."""
    from . import static_check
    from .linear_logprob.tiles import AUTOTUNE_TILES, DEFAULT_TILE
    out = {}
    default = static_check_occupancy(arch)
    for kernel, name in (("stats", "linear_stats_fwd"), ("dz", "linear_dz")):
        out[(kernel, DEFAULT_TILE.label())] = default[name]
    for spec in static_check.autotune_specs(arch):
        kernel = "stats" if spec.label.startswith("linear_stats_fwd") else "dz"
        out[(kernel, spec.label.split("@")[1])] = static_check.compile_one(spec, arch).programs_per_sm
    assert set(out) == {(k, t.label()) for k, ts in AUTOTUNE_TILES.items() for t in ts}
    return out


def format_tile_sweep(rows: list[dict]) -> str:
    lines = ["| kernel | tile | programs/SM | HBM read GB | written GB | L2->SM B/FLOP | est. ms | % peak | bound |",
             "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['kernel']} | {r['tile']} | {r['programs_per_sm']} | {r['hbm_read_gb']:.2f} | "
                     f"{r['hbm_write_gb']:.2f} | {r['l2_to_sm_bytes_per_flop']:.2e} | {r['est_ms']:.1f} | "
                     f"{r['pct_of_peak']:.0f} | {r['bound']} |")
    return "\n".join(lines)


def format_table(rows: list[Estimate]) -> str:
    lines = ["| kernel | shape | order | GPU | resident | HBM read GB | written GB | read B/FLOP | L2->SM B/FLOP "
             "| compute ms | memory ms | est. ms | % peak | bound |", "|" + "---|" * 14]
    for r in rows:
        lines.append(f"| {r.kernel} | {r.shape} | {r.order} | {r.gpu} | {r.resident_programs} | "
                     f"{r.hbm_read_bytes / 1e9:.2f} | {r.hbm_write_bytes / 1e9:.2f} | {r.read_bytes_per_flop:.2e} | "
                     f"{r.l2_to_sm_bytes_per_flop:.2e} | {r.compute_ms:.1f} | {r.memory_ms:.1f} | "
                     f"{r.time_ms:.1f} | {r.pct_of_peak:.0f} | {r.bound} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--programs-per-sm", type=int, default=None,
                        help="resident programs per SM for every kernel (default: static_check's occupancy)")
    args = parser.parse_args(argv)
    if args.programs_per_sm:
        occupancy, source = dict.fromkeys(KERNELS, args.programs_per_sm), "--programs-per-sm"
    elif os.environ.get("TRITON_INTERPRET") == "1":
        occupancy, source = dict.fromkeys(KERNELS, ASSUMED_PROGRAMS_PER_SM), "assumed (TRITON_INTERPRET=1)"
    else:
        try:
            occupancy, source = static_check_occupancy(90), "static_check sm_90 occupancy"
        except Exception as exc:  # noqa: BLE001 - no compiler here: fall back to the stated assumption
            occupancy, source = dict.fromkeys(KERNELS, ASSUMED_PROGRAMS_PER_SM), f"assumed ({exc!r:.80})"
    rows = model_table(occupancy)
    try:
        candidate_sm = candidate_occupancy(90) if "static_check" in source else None
    except Exception:  # noqa: BLE001 - as above
        candidate_sm = None
    sweep_tiles = tile_sweep(SHAPES[0], GPUS[0], candidate_sm)
    sweep = group_sweep(SHAPES[0], GPUS[0], occupancy["linear_stats_fwd"], (1, 4, 8, 16, 32, 64, 128, 256))
    print(f"programs per SM: {occupancy} ({source})")
    print(format_table(rows))
    print("linear_stats_fwd, grouped, 7B head, H100: HBM read GB per GROUP_N: "
          + ", ".join(f"{s['group_n']}: {s['hbm_read_gb']:.2f}" for s in sweep))
    print("autotune candidates, grouped, 7B head, H100 (programs per SM: "
          f"{'static_check sm_90' if candidate_sm else f'assumed {ASSUMED_PROGRAMS_PER_SM}'}):")
    print(format_tile_sweep(sweep_tiles))
    if args.json:
        tiles = {s.name: asdict(gpu_tiles(s.n_rows)) for s in SHAPES}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "assumptions": __doc__, "programs_per_sm": occupancy, "programs_per_sm_source": source,
            "tiles": tiles, "shapes": [asdict(s) for s in SHAPES], "gpus": [asdict(g) for g in GPUS],
            "rows": [asdict(r) for r in rows], "group_n_sweep_7b_h100_fwd": sweep,
            "autotune_tiles_7b_h100": sweep_tiles}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
