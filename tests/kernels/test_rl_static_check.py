"""Static GPU check of the RL kernels (rloo, ppo_loss, prm_loss) without a GPU.

Compiles each kernel at its launch configuration for sm_90 and sm_80 (kernels/_rl_static_specs.py through
kernels/static_check.py's compiler) and requires zero register spills and 128-bit global loads: these
kernels are bandwidth-bound streams over [B, T] tensors. About 20 s cold (Triton caches compilations).
"""

from __future__ import annotations

import pytest
from primeflow.kernels import static_check
from primeflow.kernels._rl_static_specs import rl_kernel_specs

SPECS = rl_kernel_specs()


@pytest.mark.parametrize("arch", [90, 80])
@pytest.mark.parametrize("spec", SPECS, ids=[s["label"] for s in SPECS])
def test_no_spills_and_wide_loads(spec, arch):
    report = static_check.compile_one(static_check.KernelSpec(**spec), arch)
    assert not report.spills, (
        f"{report.label} sm_{arch}: stack {report.stack_bytes} B, local {report.local_bytes} B"
    )
    assert report.widest_global_load == "128-bit", f"{report.label} sm_{arch}: {report.global_loads}"
