"""Static GPU check of the RL kernels (rloo, ppo_loss, prm_loss) without a GPU.

Compiles each kernel at its launch configuration for sm_90 and sm_80 (kernels/_rl_static_specs.py through
kernels/static_check.py's compiler) and requires zero register spills and 128-bit global loads: these
kernels are bandwidth-bound streams over [B, T] tensors. About 20 s cold (Triton caches compilations).

The compilation runs in a subprocess without TRITON_INTERPRET: interpreter test modules switch triton.jit to
the interpreter when they are imported, and interpreted kernels cannot be compiled.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

COMPILE_RL_KERNELS = """
import json, sys
from dataclasses import asdict
from primeflow.kernels import static_check
from primeflow.kernels._rl_static_specs import rl_kernel_specs
reports = [static_check.compile_one(static_check.KernelSpec(**spec), arch)
           for spec in rl_kernel_specs() for arch in (90, 80)]
json.dump([asdict(r) | {"spills": r.spills} for r in reports], open(sys.argv[1], "w"))
"""


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("rl_static") / "reports.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", COMPILE_RL_KERNELS, str(out)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert out.exists(), proc.stderr[-4000:]
    return json.loads(out.read_text())


def test_every_rl_kernel_is_checked_on_both_archs(reports):
    from primeflow.kernels._rl_static_specs import rl_kernel_specs

    assert {(r["label"], r["arch"]) for r in reports} == {(s["label"], a) for s in rl_kernel_specs() for a in (90, 80)}


def test_no_spills_and_wide_loads(reports):
    spilling = [(r["label"], r["arch"], r["stack_bytes"], r["local_bytes"]) for r in reports if r["spills"]]
    assert not spilling, spilling
    narrow = [(r["label"], r["arch"], r["global_loads"]) for r in reports if r["widest_global_load"] != "128-bit"]
    assert not narrow, narrow
