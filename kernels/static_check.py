"""Static GPU check without a GPU: compile every Triton kernel of primeflow.kernels for sm_90 and sm_80 and
report registers, spills, shared memory (against each target's per-block limit), resident programs per SM,
global load widths and the MMA instruction kind.

    python -m primeflow.kernels.static_check [--arch 90 80] [--json out.json] [--tiles 128x128x64]

How: triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32)) gives PTX and a cubin on a machine
without a GPU; `cuobjdump --dump-resource-usage` (shipped in Triton's wheel) reads REG/STACK/LOCAL/SHARED
from the cubin (LOCAL or STACK > 0 means the kernel spills to local memory); the PTX shows the widest
global loads (ld.global.v4.b32 = 128-bit) and wgmma (sm_90) vs mma.sync (sm_80). Integer arguments that
the JIT would specialise at realistic shapes (strides and V divisible by 16) are declared so here too,
otherwise the vectorisation the report shows would not be the one a real launch gets.

A kernel fails the check (exit status 1) if it spills or if its shared memory exceeds the target's per-block
limit: the compiler does not refuse such a kernel without a GPU, the launch would ("out of resource: shared
memory"). --tiles BNxBVxBH compiles the fused-head kernels at other tiles, to try a tiling before adopting it;
--autotune-tiles compiles them at each candidate of the opt-in autotune set (linear_logprob/tiles.py).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silence triton 3.9's transition warning

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from .linear_logprob import kernel as linear_kernel  # noqa: E402
from .linear_logprob.tiles import AUTOTUNE_TILES, DEFAULT_TILE  # noqa: E402
from .linear_logprob.triton_op import tile_config  # noqa: E402
from .logprob import kernel as logprob_kernel  # noqa: E402
from .logprob.triton_op import MAX_BLOCK_V, NUM_WARPS  # noqa: E402
from .prime_rewards import kernel as prime_kernel  # noqa: E402

GPU_TILES = tile_config(__import__("torch").device("cuda"))

# Per-SM / per-block resources, CUDA C++ Programming Guide, "Technical Specifications per Compute Capability"
# (table "Technical Specifications") and the compute capability 8.x / 9.0 shared-memory sections: maximum
# shared memory per SM 164 KB (8.0) and 228 KB (9.0); per thread block 163 KB (8.0) and 227 KB (9.0), the
# opt-in maximum a kernel can request; CUDA reserves 1 KB of shared memory per thread block. 64K 32-bit
# registers, at most 64 resident warps and 32 resident blocks per SM on both.
SHARED_PER_BLOCK_LIMIT = {90: 227 * 1024, 80: 163 * 1024}
SHARED_PER_SM = {90: 228 * 1024, 80: 164 * 1024}
SHARED_RESERVED_PER_BLOCK = 1024
REGISTERS_PER_SM = 65536
MAX_WARPS_PER_SM = 64
MAX_BLOCKS_PER_SM = 32
REGISTER_ALLOC_UNIT = 256  # registers are allocated per warp in units of 256 (CUDA occupancy calculator)


@dataclass
class KernelSpec:
    label: str
    fn: object
    signature: dict[str, str]
    constexprs: dict[str, object]
    divisible_by_16: tuple[str, ...]  # pointer and integer arguments known to be multiples of 16
    num_warps: int
    num_stages: int = 3


@dataclass
class Report:
    label: str
    arch: int
    registers: int
    stack_bytes: int
    local_bytes: int
    shared_bytes: int
    widest_global_load: str
    global_loads: list[str]
    async_copy: str  # global->shared copies feeding tl.dot: cp.async <bytes>B (sm_80+) or TMA (bulk tensor)
    mma: str
    num_warps: int = 4

    @property
    def spills(self) -> bool:
        return self.local_bytes > 0 or self.stack_bytes > 0

    @property
    def shared_limit_bytes(self) -> int:
        return SHARED_PER_BLOCK_LIMIT[self.arch]

    @property
    def over_shared_limit(self) -> bool:
        return self.shared_bytes > self.shared_limit_bytes

    @property
    def programs_per_sm(self) -> int:
        return programs_per_sm(self.arch, self.registers, self.shared_bytes, self.num_warps)

    def failures(self) -> list[str]:
        """Why this kernel fails the check (empty: it passes)."""
        out = []
        if self.spills:
            out.append(f"spills (stack {self.stack_bytes} B, local {self.local_bytes} B)")
        if self.over_shared_limit:
            out.append(f"shared memory {self.shared_bytes} B > sm_{self.arch} limit {self.shared_limit_bytes} B")
        return out

    def as_dict(self) -> dict:
        return asdict(self) | {"spills": self.spills, "shared_limit_bytes": self.shared_limit_bytes,
                               "over_shared_limit": self.over_shared_limit,
                               "programs_per_sm": self.programs_per_sm}


def programs_per_sm(arch: int, registers: int, shared_bytes: int, num_warps: int) -> int:
    """Resident programs (thread blocks) per SM: the smallest of the register, shared-memory, warp and block
    limits (0: the kernel cannot launch, e.g. shared memory over the per-block limit)."""
    if shared_bytes > SHARED_PER_BLOCK_LIMIT[arch]:
        return 0
    regs_per_warp = -(-max(registers, 1) * 32 // REGISTER_ALLOC_UNIT) * REGISTER_ALLOC_UNIT
    by_regs = (REGISTERS_PER_SM // regs_per_warp) // num_warps
    by_shared = SHARED_PER_SM[arch] // (shared_bytes + SHARED_RESERVED_PER_BLOCK)
    return min(by_regs, by_shared, MAX_WARPS_PER_SM // num_warps, MAX_BLOCKS_PER_SM)


def _sig(fn, types: dict[str, str]) -> dict[str, str]:
    """Signature for ASTSource: runtime args from `types`, every other arg must be a tl.constexpr."""
    if hasattr(fn, "params"):
        constexpr_args = {p.name for p in fn.params if p.is_constexpr}
    else:  # an InterpretedFunction (TRITON_INTERPRET=1): read the tl.constexpr annotations
        annotations = inspect.signature(fn.fn).parameters
        constexpr_args = {n for n, p in annotations.items() if "constexpr" in str(p.annotation)}
    missing = [n for n in fn.arg_names if n not in types and n not in constexpr_args]
    if missing:
        raise ValueError(f"static_check: no type given for {fn.__name__} argument(s) {missing}")
    return {name: types.get(name, "constexpr") for name in fn.arg_names}


def autotune_specs(arch: int) -> list[KernelSpec]:
    """The bf16 fused-head kernels at each of their autotune candidates for `arch` (min_capability <= arch)
    but the default (linear_logprob/tiles.py), labelled with the tile: a candidate that spills or overflows
    shared memory on a target fails the check before the autotuner could pick it on a GPU."""
    prefixes = {"stats": "linear_stats_fwd[bf16", "dz": "linear_dz[bf16"}
    out = []
    for kernel, candidates in AUTOTUNE_TILES.items():
        for tile in candidates:
            if tile == DEFAULT_TILE or tile.min_capability > arch:
                continue
            override = tile.constexprs() | {"num_warps": tile.num_warps, "num_stages": tile.num_stages}
            out += [replace(spec, label=f"{spec.label}@{tile.label()}") for spec in specs(override)
                    if spec.label.startswith(prefixes[kernel])]
    return out


def specs(linear_tiles: dict | None = None) -> list[KernelSpec]:
    """Every Triton kernel, at the tile configuration its launcher uses on CUDA; `linear_tiles` (BLOCK_N,
    BLOCK_V, BLOCK_H, optionally GROUP_N / num_warps / num_stages) replaces the fused-head kernels' tiles."""
    linear_cfg = GPU_TILES | (linear_tiles or {})
    out: list[KernelSpec] = []
    for dtype in ("bf16", "fp32"):
        for entropy in (False, True):
            out.append(KernelSpec(
                f"token_stats_fwd[{dtype},entropy={entropy}]", logprob_kernel.token_stats_fwd_kernel,
                _sig(logprob_kernel.token_stats_fwd_kernel, {
                    "logits_ptr": f"*{dtype}", "labels_ptr": "*i64", "m_ptr": "*fp32", "ls_ptr": "*fp32",
                    "ent_ptr": "*fp32", "zt_ptr": "*fp32", "V": "i32", "stride_row": "i64",
                    "inv_temperature": "fp32"}),
                {"BLOCK_V": MAX_BLOCK_V, "WITH_ENTROPY": entropy},
                ("logits_ptr", "labels_ptr", "m_ptr", "ls_ptr", "ent_ptr", "zt_ptr", "V", "stride_row"),
                NUM_WARPS))
        out.append(KernelSpec(
            f"token_logprobs_bwd[{dtype},entropy=True]", logprob_kernel.token_logprobs_bwd_kernel,
            _sig(logprob_kernel.token_logprobs_bwd_kernel, {
                "logits_ptr": f"*{dtype}", "labels_ptr": "*i64", "m_ptr": "*fp32", "ls_ptr": "*fp32",
                "ent_ptr": "*fp32", "grad_logp_ptr": "*fp32", "grad_ent_ptr": "*fp32",
                "grad_logits_ptr": f"*{dtype}", "V": "i32",
                "stride_row": "i64", "stride_grad_row": "i64", "inv_temperature": "fp32"}),
            {"BLOCK_V": MAX_BLOCK_V, "WITH_ENTROPY": True},
            ("logits_ptr", "grad_logits_ptr", "V", "stride_row", "stride_grad_row"), NUM_WARPS))
    tiles = {k: linear_cfg[k] for k in ("BLOCK_N", "BLOCK_V", "BLOCK_H")}
    warps, stages = linear_cfg["num_warps"], linear_cfg["num_stages"]
    for dtype in ("bf16", "fp32"):
        linear_types = {"h_ptr": f"*{dtype}", "w_ptr": f"*{dtype}", "labels_ptr": "*i64", "m_ptr": "*fp32",
                        "ls_ptr": "*fp32", "ent_ptr": "*fp32", "zt_ptr": "*fp32", "N": "i32", "V": "i32",
                        "H": "i32",
                        "stride_hn": "i64", "stride_wv": "i64", "inv_temperature": "fp32",
                        "cols_per_split": "i32", "g_ptr": "*fp32", "g_ent_ptr": "*fp32", "dz_ptr": "*fp32"}
        aligned = ("h_ptr", "w_ptr", "H", "stride_hn", "stride_wv", "V", "dz_ptr")
        fast = {**tiles, "GROUP_N": linear_cfg["GROUP_N"], "DOT_FP32": dtype == "fp32"}
        out.append(KernelSpec(f"linear_stats_fwd[{dtype},entropy=True]",
                              linear_kernel.linear_stats_fwd_kernel,
                              _sig(linear_kernel.linear_stats_fwd_kernel, linear_types),
                              {**fast, "WITH_ENTROPY": True}, aligned, warps, stages))
        out.append(KernelSpec(f"linear_dz[{dtype},entropy=True]", linear_kernel.linear_dz_kernel,
                              _sig(linear_kernel.linear_dz_kernel, {**linear_types, "dz_ptr": f"*{dtype}"}),
                              {**fast, "WITH_ENTROPY": True}, aligned, warps, stages))
    prime_types = {"labels_ptr": "*i64", "mask_ptr": "*i8", "logp_ptr": "*fp32", "reward_ptr": "*fp32",
                   "N": "i32", "beta": "fp32"}
    for slot in ("pol", "prm", "ref"):
        prime_types.update({f"{slot}_a": "*bf16", f"{slot}_w": "*bf16", f"{slot}_V": "i32",
                            f"{slot}_H": "i32",
                            f"{slot}_sa": "i64", f"{slot}_sw": "i64"})
    aligned = tuple(f"{s}_{f}" for s in ("pol", "prm", "ref") for f in ("a", "w", "V", "H", "sa", "sw"))
    for kinds in ((2, 2, 2), (1, 1, 1)):
        out.append(KernelSpec(
            f"prime_rewards[bf16,{'linear' if kinds[0] == 2 else 'logits'}x3]",
            prime_kernel.prime_rewards_kernel,
            _sig(prime_kernel.prime_rewards_kernel, prime_types),
            {**tiles, "POL_KIND": kinds[0], "PRM_KIND": kinds[1], "REF_KIND": kinds[2], "HAS_MASK": True,
             "POL_DOT_FP32": False, "PRM_DOT_FP32": False, "REF_DOT_FP32": False},
            aligned, warps, stages))
    return out + rl_specs()


def rl_specs() -> list[KernelSpec]:
    """The RL kernels (rloo, ppo_loss, prm_loss), declared next to them in _rl_static_specs.py."""
    from ._rl_static_specs import rl_kernel_specs
    return [KernelSpec(**d) for d in rl_kernel_specs()]


def _cuobjdump() -> str:
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")


def compile_one(spec: KernelSpec, arch: int) -> Report:
    names = spec.fn.arg_names
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in spec.divisible_by_16 if n in names}
    src = ASTSource(spec.fn, spec.signature, constexprs=spec.constexprs, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": spec.num_warps, "num_stages": spec.num_stages})
    ptx = compiled.asm["ptx"]
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([_cuobjdump(), "--dump-resource-usage", cubin.name], capture_output=True,
                               text=True, check=True).stdout
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    loads = sorted(set(re.findall(r"ld\.global(?:\.[\w]+)*", ptx)))
    widths = [_load_bits(op) for op in loads]
    cp_pattern = r"cp\.async\.c[ag]\S*\s+\[[^\]]+\],\s*\[[^\]]+\],\s*(0x[0-9a-f]+|\d+)"
    cp_sizes = [int(b, 0) for b in re.findall(cp_pattern, ptx)]
    async_copy = ("TMA" if "cp.async.bulk.tensor" in ptx
                  else f"cp.async {max(cp_sizes)}B" if cp_sizes else "none")
    mma = "wgmma" if "wgmma" in ptx else ("mma.sync" if "mma.sync" in ptx else "none")
    return Report(spec.label, arch, int(fields.get("REG", 0)), int(fields.get("STACK", 0)),
                  int(fields.get("LOCAL", 0)), max(int(fields.get("SHARED", 0)), compiled.metadata.shared),
                  f"{max(widths) if widths else 0}-bit", loads, async_copy, mma, spec.num_warps)


def _load_bits(op: str) -> int:
    """Bits moved by one PTX global load, e.g. ld.global.v4.b32 -> 128."""
    vec = re.search(r"\.v(\d)", op)
    elem = re.search(r"\.[bfsu](\d+)$", op)
    return (int(vec.group(1)) if vec else 1) * (int(elem.group(1)) if elem else 0)


def run(archs: tuple[int, ...] = (90, 80)) -> list[Report]:
    return [compile_one(spec, arch) for spec in specs() for arch in archs]


def format_table(reports: list[Report]) -> str:
    rows = ["| kernel | sm | regs | spills (stack/local B) | shared B (limit) | programs/SM | widest ld.global "
            "| async copy | mma |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        over = " OVER" if r.over_shared_limit else ""
        rows.append(f"| {r.label} | {r.arch} | {r.registers} | {r.stack_bytes}/{r.local_bytes} | "
                    f"{r.shared_bytes} ({r.shared_limit_bytes}){over} | {r.programs_per_sm} | "
                    f"{r.widest_global_load} | {r.async_copy} | {r.mma} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90, 80])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--filter", default="", help="only kernels whose label contains this string")
    parser.add_argument("--tiles", type=_tiles, default=None, metavar="BNxBVxBH",
                        help="fused-head tiles to compile instead of tile_config's, e.g. 128x256x64")
    parser.add_argument("--warps", type=int, default=None, help="num_warps of the fused-head kernels")
    parser.add_argument("--stages", type=int, default=None, help="num_stages of the fused-head kernels")
    parser.add_argument("--autotune-tiles", action="store_true",
                        help="compile the bf16 fused-head kernels at each autotune candidate (tiles.py) instead")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    override = (args.tiles or {}) | ({"num_warps": args.warps} if args.warps else {}) | (
        {"num_stages": args.stages} if args.stages else {})
    if args.autotune_tiles:
        reports = [compile_one(spec, arch) for arch in args.arch for spec in autotune_specs(arch)
                   if args.filter in spec.label]
    else:
        reports = [compile_one(spec, arch) for spec in specs(override) if args.filter in spec.label
                   for arch in args.arch]
    print(format_table(reports))
    if args.json:
        args.json.write_text(json.dumps([r.as_dict() for r in reports], indent=1))
    failing = [f"{r.label}@sm_{r.arch}: {'; '.join(r.failures())}" for r in reports if r.failures()]
    if failing:
        print("FAILING:\n  " + "\n  ".join(failing), file=sys.stderr)
    return 1 if failing else 0


def _tiles(text: str) -> dict:
    block_n, block_v, block_h = (int(x) for x in text.lower().split("x"))
    return {"BLOCK_N": block_n, "BLOCK_V": block_v, "BLOCK_H": block_h}


if __name__ == "__main__":
    raise SystemExit(main())
