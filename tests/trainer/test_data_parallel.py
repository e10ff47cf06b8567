"""Data parallelism through megatron-core's DistributedDataParallel and optimizer (torchrun, 2 processes over
gloo, against the same script in one process): DP=2 equals DP=1 on the same global batch, DP ranks end
bitwise identical, the distributed optimizer equals the plain one, holds half of the AdamW state per rank and
resumes bitwise from its checkpointed state; fp32 and bf16 weights (fp32 masters).

Tolerances (derived, not fitted):
  * fp32 gradients, DP=2 vs DP=1: each rank packs its own rows, so the GEMM heights and the order in which
    micro-batches and ranks are summed differ: fp32 reorder effects, bounded like any packing change by
    MODEL_PARITY_REL of each tensor's largest entry (tests/tolerances.py; the float64 packing tests use it).
  * weights after one AdamW step: `assert_close_after_one_adam_step` (every element within 2 lr; all but
    1 % within the gradient bound; Adam's lr/eps slope near g = 0 amplifies reorder differences).
  * plain vs distributed optimizer at DP=2: a sum of two ranks' gradients is the same in either order, and
    AdamW is elementwise, so the only difference is the grad norm (sum of squares over shards, then over
    ranks), which enters through the clip factor: weights within 1e-6 of max|w| (clip factor off by a few
    ulps times an update of at most lr).
  * bf16: the forward rounds activations to bf16; another packing can round an activation to the
    neighbouring bf16 value (2^-8 relative), which moves gradients by up to that relative amount: grads within
    2^-7 of each tensor's largest entry; weights (bf16 copies of the fp32 masters) within 2 lr + one bf16 ulp
    of |w|.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from child_env import fresh_world_env
from primeflow.models import make_tiny_checkpoint
from tolerances import MODEL_PARITY_REL, assert_close_after_one_adam_step

pytestmark = [pytest.mark.multiproc, pytest.mark.slow]

SCRIPT = Path(__file__).resolve().parent / "dp_parity.py"
LR = 1e-3  # dp_parity.OPTIM
BF16_GRAD_REL = 2.0**-7


def _env() -> dict[str, str]:
    return fresh_world_env(OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dp")
    ckpt = make_tiny_checkpoint(tmp / "tiny", seed=3)
    out = {}
    for dp in (1, 2):
        (tmp / f"dp{dp}").mkdir()
        path = tmp / f"dp{dp}" / "result.pt"
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={dp}"] if dp > 1 else []
        cmd = [sys.executable, *launcher, str(SCRIPT), "--out", str(path), str(ckpt)]
        proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        out[dp] = torch.load(path, weights_only=False)
        assert out[dp]["dp"] == dp
    return out


def _max_rel(got: dict, want: dict) -> float:
    assert got.keys() == want.keys()
    return max(float((got[k].double() - want[k].double()).abs().max()) / max(float(want[k].abs().max()), 1e-30)
               for k in want)


@pytest.mark.parametrize("distributed", [False, True], ids=["plain", "distributed"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_dp2_step_equals_dp1(results, dtype, distributed):
    one, two = results[1][(dtype, distributed)], results[2][(dtype, distributed)]
    assert two["ranks_equal"], "DP ranks hold different weights after the step"
    assert two["micro_batches_here"] >= 2  # 6 rows per rank in micro-batches of <= 40 tokens
    moved = _max_rel(one["weights"], results[1][(dtype, False)]["weights"]) if distributed else None
    assert abs(two["loss"] - one["loss"]) <= MODEL_PARITY_REL * abs(one["loss"])
    grad_rel = MODEL_PARITY_REL if dtype == "float32" else BF16_GRAD_REL
    assert abs(two["grad_norm"] - one["grad_norm"]) <= grad_rel * one["grad_norm"]
    if not distributed:  # with the distributed optimizer each rank's buffer holds only its reduced shard
        assert _max_rel(two["grads"], one["grads"]) <= grad_rel
    if dtype == "float32":
        assert_close_after_one_adam_step(two["weights"], one["weights"], f"DP2 vs DP1 {dtype}", lr=LR,
                                         rel=MODEL_PARITY_REL)
    else:
        for name, w in one["weights"].items():
            diff = (two["weights"][name].double() - w.double()).abs()
            allowed = 2 * LR + 2.0**-8 * w.double().abs()
            assert bool((diff <= allowed).all()), f"{name}: bf16 weights differ by {float(diff.max()):.2e}"
    if distributed:
        assert moved is not None and moved <= 1e-6, f"distributed vs plain optimizer at DP=1: {moved:.2e}"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_distributed_optimizer_matches_plain_and_shards_state(results, dtype):
    plain, dist_ = results[2][(dtype, False)], results[2][(dtype, True)]
    assert _max_rel(dist_["weights"], plain["weights"]) <= 1e-6
    # together the ranks hold exactly one copy of the moments, each about half
    assert dist_["moments_all_ranks"] == plain["moments_here"] == plain["n_params"]
    assert 0 < dist_["moments_here"] < dist_["n_params"]


@pytest.mark.parametrize("dp", [1, 2])
@pytest.mark.parametrize("distributed", [False, True], ids=["plain", "distributed"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_optimizer_state_round_trip_resumes_bitwise(results, dp, dtype, distributed):
    assert results[dp][(dtype, distributed)]["resume_bitwise"]


def test_rank_without_rows_joins_the_reduction(results):
    """One row for two ranks: rank 1 has no micro-batch and runs the zero-weighted backward, so DDP's
    bucketed reduction completes on both ranks, and the step equals DP=1's."""
    one, two = results[1]["one_row"], results[2]["one_row"]
    assert two["ranks_equal"]
    assert _max_rel(two["grads"], one["grads"]) <= MODEL_PARITY_REL
    assert_close_after_one_adam_step(two["weights"], one["weights"], "one row", lr=LR, rel=MODEL_PARITY_REL)
