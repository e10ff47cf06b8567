"""Static GPU check (no GPU needed): every Triton kernel compiles for sm_90 and sm_80 without spilling and
within each target's per-block shared memory (a kernel over it fails the check), the fused-head kernels use
the tensor cores (wgmma on sm_90, mma.sync on sm_80) fed by 16-byte async copies, and the bandwidth-bound
logits kernels issue 128-bit global loads. bf16 variants only (the production dtype) to keep CI time low;
`python -m primeflow.kernels.static_check` prints the full table, fp32 included.

The check runs in a subprocess without TRITON_INTERPRET: other test modules switch triton.jit to the
interpreter, and interpreted kernels cannot be compiled.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def _run_check(tmp_path_factory, label_filter: str, *extra: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    out = tmp_path_factory.mktemp("static") / "static.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "primeflow.kernels.static_check", "--filter", label_filter,
                           "--json", str(out), *extra], capture_output=True, text=True, env=env, timeout=600)
    print(proc.stdout)
    assert out.exists(), proc.stderr[-4000:]
    return proc, json.loads(out.read_text())


def _compile(tmp_path_factory, label_filter: str) -> list[dict]:
    return _run_check(tmp_path_factory, label_filter)[1]


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> list[dict]:
    return _compile(tmp_path_factory, "bf16")


@pytest.fixture(scope="module")
def fp32_reports(tmp_path_factory) -> list[dict]:
    return _compile(tmp_path_factory, "fp32,entropy=True")


def test_every_bf16_kernel_compiles_for_sm90_and_sm80_without_spills(reports):
    labels = {r["label"] for r in reports}
    assert {r["arch"] for r in reports} == {80, 90}
    assert any(label.startswith("linear_stats_fwd") for label in labels)
    assert any(label.startswith("prime_rewards") for label in labels)
    spilling = [(r["label"], r["arch"], r["stack_bytes"], r["local_bytes"]) for r in reports if r["spills"]]
    assert not spilling, spilling
    assert all(r["registers"] <= 255 for r in reports)


# CUDA C++ Programming Guide, Technical Specifications per Compute Capability: 227 KB (9.0), 163 KB (8.0)
SHARED_LIMIT = {90: 227 * 1024, 80: 163 * 1024}


def test_every_bf16_kernel_fits_the_shared_memory_limit(reports):
    for r in reports:
        assert r["shared_limit_bytes"] == SHARED_LIMIT[r["arch"]], r
        assert r["shared_bytes"] <= r["shared_limit_bytes"] and not r["over_shared_limit"], r
        assert r["programs_per_sm"] >= 1, r
    fused = [r for r in reports if r["label"].startswith(("linear_stats_fwd[bf16", "linear_dz[bf16"))]
    assert fused and all(r["shared_bytes"] > 16 * 1024 for r in fused)  # multi-stage tiles: a real number


def test_a_kernel_over_the_shared_memory_limit_fails(tmp_path_factory):
    """linear_dz at 64x128x256 tiles and 4 stages needs (64 + 128) x 256 x 2 B x 4 = 384 KiB of shared memory
    on sm_90, over both targets' limits (it neither spills nor fails to compile): the check must fail it."""
    proc, reports = _run_check(tmp_path_factory, "linear_dz[bf16", "--tiles", "64x128x256", "--stages", "4")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert {r["arch"] for r in reports} == {80, 90}
    for r in reports:
        assert r["shared_bytes"] > SHARED_LIMIT[r["arch"]] and r["over_shared_limit"], r
        assert not r["spills"] and r["programs_per_sm"] == 0, r
        assert f"{r['label']}@sm_{r['arch']}: shared memory {r['shared_bytes']} B > sm_{r['arch']} limit" in proc.stderr


def test_shared_limit_and_occupancy_arithmetic():
    """Hand-computed cases of Report.failures() and programs_per_sm (no compilation)."""
    from primeflow.kernels import static_check as sc

    def report(arch, shared, regs=128, warps=8, stack=0):
        return sc.Report("k", arch, regs, stack, 0, shared, "128-bit", [], "none", "none", warps)

    assert report(90, 227 * 1024).failures() == [] and report(80, 163 * 1024).failures() == []
    assert report(90, 227 * 1024 + 1).failures() == [f"shared memory {227 * 1024 + 1} B > sm_90 limit 232448 B"]
    assert report(80, 163 * 1024 + 1).over_shared_limit and not report(90, 163 * 1024 + 1).over_shared_limit
    assert len(report(80, 200 * 1024, stack=8).failures()) == 2  # spills and shared memory, both named
    # 128 regs x 32 lanes = 4096 per warp -> 16 warps -> 2 programs of 8 warps; shared: 228 KiB // 73 KiB = 3
    assert sc.programs_per_sm(90, 128, 73728, 8) == 2
    # 80 regs -> 2560 per warp -> 25 warps -> 3 programs; shared 3 (sm_90) / 2 (sm_80: 164 KiB // 73 KiB)
    assert sc.programs_per_sm(90, 80, 73728, 8) == 3 and sc.programs_per_sm(80, 80, 73728, 8) == 2
    assert sc.programs_per_sm(90, 32, 0, 4) == 16  # warp limit: 64 warps / 4
    assert sc.programs_per_sm(90, 16, 0, 1) == 32  # block limit
    assert sc.programs_per_sm(90, 32, 228 * 1024, 4) == 0  # over the per-block limit: cannot launch


def test_fused_head_kernels_use_tensor_cores(reports):
    for r in reports:
        if r["label"].startswith(("linear_stats_fwd[bf16", "linear_dz[bf16", "prime_rewards[bf16,linear")):
            assert r["mma"] == ("wgmma" if r["arch"] == 90 else "mma.sync"), r
            assert r["async_copy"] in ("cp.async 16B", "TMA"), r  # 128-bit global->shared tile copies


def test_fp32_fused_head_kernels_do_not_round_to_tf32(fp32_reports):
    """fp32 inputs: IEEE fp32 dots (input_precision="ieee"), no tensor-core MMA, which on sm_80/sm_90 would be
    TF32 (10-bit mantissas) and break the fp32 tolerances the kernels are validated with."""
    fp32 = [r for r in fp32_reports if r["label"].startswith(("linear_stats_fwd[fp32", "linear_dz[fp32"))]
    assert fp32
    for r in fp32:
        assert r["mma"] == "none", r


def test_logits_kernels_load_128_bits(reports):
    for r in reports:
        if r["label"].startswith(("token_", "prime_rewards[bf16,logits")):
            assert r["widest_global_load"] == "128-bit", r


def test_every_kernel_module_is_covered():
    """A new top-level @triton.jit kernel must be added to static_check.specs() (helpers start with _)."""
    from primeflow.kernels import static_check
    from primeflow.kernels.linear_logprob import kernel as k1
    from primeflow.kernels.logprob import kernel as k2
    from primeflow.kernels.ppo_loss import kernel as k4
    from primeflow.kernels.prime_rewards import kernel as k3
    from primeflow.kernels.prm_loss import kernel as k5
    from primeflow.kernels.rloo import kernel as k6

    def kernels(mod):
        return {name for name, obj in vars(mod).items() if type(obj).__name__ in ("JITFunction", "InterpretedFunction")
                and not name.startswith("_") and obj.fn.__module__ == mod.__name__}

    launched = set().union(*(kernels(m) for m in (k1, k2, k3, k4, k5, k6)))
    covered = {s.fn.fn.__name__ if hasattr(s.fn, "fn") else s.fn.__name__ for s in static_check.specs()}
    assert launched <= covered, launched - covered


def test_every_autotune_candidate_compiles_without_spills_within_its_shared_estimate(tmp_path_factory):
    """The opt-in autotune set (linear_logprob/tiles.py) holds only tilings the GPU can run well: each
    candidate's bf16 forward and backward recompute compile for sm_90, and for sm_80 unless the tile says it
    needs sm_90 (min_capability), on the tensor cores without spilling, and the shared memory they compile
    to is at most the operand-ring estimate the autotuner prunes by, so pruning never keeps a tiling whose
    launch would fail."""
    from primeflow.kernels.linear_logprob.tiles import AUTOTUNE_TILES, DEFAULT_TILE
    proc, reports = _run_check(tmp_path_factory, "bf16", "--autotune-tiles")
    assert proc.returncode == 0, proc.stderr[-2000:]
    prefixes = {"stats": "linear_stats_fwd[bf16", "dz": "linear_dz[bf16"}
    expected = {(prefixes[k], t.label(), arch): t for k, ts in AUTOTUNE_TILES.items() for t in ts
                for arch in (80, 90) if t != DEFAULT_TILE and t.min_capability <= arch}
    got = {(r["label"].split(",")[0], r["label"].split("@")[1], r["arch"]): r for r in reports}
    assert set(got) == set(expected) and len(reports) == len(expected)
    assert any(t.min_capability == 90 for t in expected.values())  # the sm_80 exclusion is exercised
    for key, r in got.items():
        tile = expected[key]
        assert not r["spills"] and r["mma"] == ("wgmma" if r["arch"] == 90 else "mma.sync"), r
        assert r["shared_bytes"] <= tile.operand_shared_bytes(2) <= SHARED_LIMIT[r["arch"]], r
        assert r["programs_per_sm"] >= 1, r
