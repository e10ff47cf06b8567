"""Static GPU check without a GPU: compile every Triton kernel of primeflow.kernels for sm_90 and sm_80 and
report registers, spills, shared memory, global load widths and the MMA instruction kind.

    python -m primeflow.kernels.static_check [--arch 90 80] [--json out.json]

How: triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32)) gives PTX and a cubin on a machine
without a GPU; `cuobjdump --dump-resource-usage` (shipped in Triton's wheel) reads REG/STACK/LOCAL/SHARED
from the cubin (LOCAL or STACK > 0 means the kernel spills to local memory); the PTX shows the widest
global loads (ld.global.v4.b32 = 128-bit) and wgmma (sm_90) vs mma.sync (sm_80). Integer arguments that
the JIT would specialise at realistic shapes (strides and V divisible by 16) are declared so here too,
otherwise the vectorisation the report shows would not be the one a real launch gets.
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
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silence triton 3.9's transition warning

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from .linear_logprob import kernel as linear_kernel  # noqa: E402
from .linear_logprob.triton_op import tile_config  # noqa: E402
from .logprob import kernel as logprob_kernel  # noqa: E402
from .logprob.triton_op import MAX_BLOCK_V, NUM_WARPS  # noqa: E402
from .prime_rewards import kernel as prime_kernel  # noqa: E402

GPU_TILES = tile_config(__import__("torch").device("cuda"))


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

    @property
    def spills(self) -> bool:
        return self.local_bytes > 0 or self.stack_bytes > 0


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


def specs() -> list[KernelSpec]:
    """Every Triton kernel, at the tile configuration its launcher uses on CUDA."""
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
    tiles = {k: GPU_TILES[k] for k in ("BLOCK_N", "BLOCK_V", "BLOCK_H")}
    for dtype in ("bf16", "fp32"):
        linear_types = {"h_ptr": f"*{dtype}", "w_ptr": f"*{dtype}", "labels_ptr": "*i64", "m_ptr": "*fp32",
                        "ls_ptr": "*fp32", "ent_ptr": "*fp32", "zt_ptr": "*fp32", "N": "i32", "V": "i32",
                        "H": "i32",
                        "stride_hn": "i64", "stride_wv": "i64", "inv_temperature": "fp32",
                        "cols_per_split": "i32", "g_ptr": "*fp32", "g_ent_ptr": "*fp32", "dz_ptr": "*fp32"}
        aligned = ("h_ptr", "w_ptr", "H", "stride_hn", "stride_wv", "V", "dz_ptr")
        fast = {**tiles, "DOT_FP32": dtype == "fp32"}
        out.append(KernelSpec(f"linear_stats_fwd[{dtype},entropy=True]",
                              linear_kernel.linear_stats_fwd_kernel,
                              _sig(linear_kernel.linear_stats_fwd_kernel, linear_types),
                              {**fast, "WITH_ENTROPY": True}, aligned, GPU_TILES["num_warps"]))
        out.append(KernelSpec(f"linear_dz[{dtype},entropy=True]", linear_kernel.linear_dz_kernel,
                              _sig(linear_kernel.linear_dz_kernel, {**linear_types, "dz_ptr": f"*{dtype}"}),
                              {**fast, "WITH_ENTROPY": True}, aligned, GPU_TILES["num_warps"]))
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
            aligned, GPU_TILES["num_warps"]))
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
                  f"{max(widths) if widths else 0}-bit", loads, async_copy, mma)


def _load_bits(op: str) -> int:
    """Bits moved by one PTX global load, e.g. ld.global.v4.b32 -> 128."""
    vec = re.search(r"\.v(\d)", op)
    elem = re.search(r"\.[bfsu](\d+)$", op)
    return (int(vec.group(1)) if vec else 1) * (int(elem.group(1)) if elem else 0)


def run(archs: tuple[int, ...] = (90, 80)) -> list[Report]:
    return [compile_one(spec, arch) for spec in specs() for arch in archs]


def format_table(reports: list[Report]) -> str:
    rows = ["| kernel | sm | regs | spills (stack/local B) | shared B | widest ld.global | async copy "
            "| mma |",
            "|---|---|---|---|---|---|---|---|"]
    for r in reports:
        rows.append(f"| {r.label} | {r.arch} | {r.registers} | {r.stack_bytes}/{r.local_bytes} | "
                    f"{r.shared_bytes} | {r.widest_global_load} | {r.async_copy} | {r.mma} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90, 80])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--filter", default="", help="only kernels whose label contains this string")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    reports = [compile_one(spec, arch) for spec in specs() if args.filter in spec.label for arch in args.arch]
    print(format_table(reports))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) | {"spills": r.spills} for r in reports], indent=1))
    spilling = [f"{r.label}@sm_{r.arch}" for r in reports if r.spills]
    if spilling:
        print("SPILLS: " + ", ".join(spilling), file=sys.stderr)
    return 1 if spilling else 0


if __name__ == "__main__":
    raise SystemExit(main())
