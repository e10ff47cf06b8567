"""Static GPU check (no GPU needed): every Triton kernel compiles for sm_90 and sm_80 without spilling, the
fused-head kernels use the tensor cores (wgmma on sm_90, mma.sync on sm_80), and the bandwidth-bound
logits kernels issue 128-bit global loads. bf16 variants only (the production dtype) to keep CI time low;
`python -m primeflow.kernels.static_check` prints the full table, fp32 included.
"""

from __future__ import annotations

import pytest
from primeflow.kernels import static_check

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

BF16_SPECS = [s for s in static_check.specs() if "bf16" in s.label]


@pytest.mark.parametrize("arch", [90, 80])
@pytest.mark.parametrize("spec", BF16_SPECS, ids=[s.label for s in BF16_SPECS])
def test_compiles_without_spills(spec, arch):
    report = static_check.compile_one(spec, arch)
    print(static_check.format_table([report]))
    assert not report.spills, f"{spec.label} spills on sm_{arch}: {report}"
    assert report.registers <= 255
    if spec.label.startswith(("linear", "prime_rewards[bf16,linear")):
        assert report.mma == ("wgmma" if arch == 90 else "mma.sync")
        assert report.async_copy in ("cp.async 16B", "TMA")  # 128-bit global->shared tile copies
    elif spec.label.startswith(("token_", "prime_rewards")):  # the bandwidth-bound logits kernels
        assert report.widest_global_load == "128-bit", report.global_loads


def test_every_kernel_module_is_covered():
    """A new @triton.jit kernel must be added to static_check.specs()."""
    import triton
    from primeflow.kernels.linear_logprob import kernel as k1
    from primeflow.kernels.logprob import kernel as k2
    from primeflow.kernels.ppo_loss import kernel as k4
    from primeflow.kernels.prime_rewards import kernel as k3
    from primeflow.kernels.prm_loss import kernel as k5
    from primeflow.kernels.rloo import kernel as k6
    launched = {name for mod in (k1, k2, k3, k4, k5, k6) for name, obj in vars(mod).items()
                if isinstance(obj, triton.runtime.JITFunction) and not name.startswith("_")
                and obj.__module__ == mod.__name__}
    covered = {s.fn.__name__ for s in static_check.specs()}
    assert launched <= covered, launched - covered
