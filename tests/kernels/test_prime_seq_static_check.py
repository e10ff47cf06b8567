"""Static GPU check of prime_rewards_seq_kernel (prime_token_rewards with cu_seqlens), both variants.

tests/kernels/test_rl_static_check.py covers its logits variant (held to 128-bit loads with the other
bandwidth-bound RL kernels); this adds the (hidden, weight) variant, which must stay on the tensor cores
(wgmma on sm_90, mma.sync on sm_80, 16-byte async tile copies) like prime_rewards_kernel, and neither may
spill: the [BLOCK_N, BLOCK_N] same-sequence reduction after the vocabulary loops must not push the
fused-head kernel over the register file. Compiled in a subprocess without TRITON_INTERPRET (interpreted
kernels cannot be compiled); ~10-20 s cold.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

COMPILE = """
import json, sys
from dataclasses import asdict
from primeflow.kernels import static_check
from primeflow.kernels._rl_static_specs import prime_seq_specs
reports = [static_check.compile_one(static_check.KernelSpec(**spec), arch)
           for spec in prime_seq_specs() for arch in (90, 80)]
json.dump([asdict(r) | {"spills": r.spills} for r in reports], open(sys.argv[1], "w"))
"""


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("prime_seq_static") / "reports.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", COMPILE, str(out)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert out.exists(), proc.stderr[-4000:]
    return json.loads(out.read_text())


def test_both_variants_on_both_archs(reports):
    assert {(r["label"], r["arch"]) for r in reports} == {
        (f"prime_rewards[bf16,{kind}x3,seq_sums]", arch) for kind in ("linear", "logits") for arch in (90, 80)}


def test_no_spills(reports):
    spilling = [(r["label"], r["arch"], r["stack_bytes"], r["local_bytes"]) for r in reports if r["spills"]]
    assert not spilling, spilling
    assert all(r["registers"] <= 255 for r in reports)


def test_linear_variant_on_tensor_cores_logits_variant_128_bit(reports):
    for r in reports:
        if ",linear" in r["label"]:
            assert r["mma"] == ("wgmma" if r["arch"] == 90 else "mma.sync"), r
            assert r["async_copy"] in ("cp.async 16B", "TMA"), r
        else:
            assert r["widest_global_load"] == "128-bit", r
