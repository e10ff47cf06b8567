"""The trainer's training passes with pipeline parallelism (PP=2, Megatron's 1F1B schedule over gloo) equal
the PP=1 passes on the same batch: batch log-probs, PPO-clip gradients and a clipped AdamW step, PRM CE
gradients and the whole PRM stage, SFT gradients and a `run_sft` step with its export. Each batch is
packed into >= 4 micro-batches of different token counts, so the schedule's loss scaling (which megatron
divides by the micro-batch count unless told otherwise) and the variable activation shapes are exercised.
An untied Qwen2 and a tied Llama (its embedding and output weight on different stages) tiny model.

Tolerance: PP only splits the layers over two processes (activations and their gradients cross the stage
boundary as exact fp32 copies, micro-batches are accumulated in the same order), so the only differences
allowed are fp32 reduction-order effects: the grad norm's sum is split into per-stage partial sums (fp64,
then a float), and a tied embedding's gradient is the sum of two stages' parts instead of one accumulation.
1e-6 relative to each tensor's largest entry is ~10 fp32 ulps; a scaling bug (a share divided by the
number of micro-batches, a missing stage in the norm, a missing embedding sync) is off by >= 1e-2.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from child_env import fresh_world_env
from primeflow.models import make_tiny_checkpoint
from tolerances import assert_close_after_one_adam_step

pytestmark = [pytest.mark.multiproc, pytest.mark.slow]

_SCRIPT = Path(__file__).with_name("pp_parity.py")
REL = 1e-6


def _env() -> dict[str, str]:
    return fresh_world_env(OMP_NUM_THREADS="1")


def _launch(pp: int, ckpts: list[Path], out: Path, seed: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={pp}", str(_SCRIPT),
           "--pp", str(pp), "--seed", str(seed), "--out", str(out), *map(str, ckpts)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> tuple[dict, dict]:
    seed = int(os.environ.get("PRIMEFLOW_TEST_SEED", torch.randint(0, 2**31 - 1, ()).item()))
    print(f"seed={seed} (replay with PRIMEFLOW_TEST_SEED={seed})")
    root = tmp_path_factory.mktemp("pp")
    ckpts = [make_tiny_checkpoint(root / "qwen2_untied", seed=seed % 1000),
             make_tiny_checkpoint(root / "llama_tied", seed=seed % 1000 + 1, architecture="llama",
                                  tie_word_embeddings=True, vocab_size=320)]
    (root / "pp1").mkdir()
    (root / "pp2").mkdir()
    procs = {pp: _launch(pp, ckpts, root / f"pp{pp}" / "result.pt", seed) for pp in (1, 2)}
    for pp, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"PP={pp} run failed:\n{out[-3000:]}\n{err[-6000:]}"
    return tuple(torch.load(root / f"pp{pp}" / "result.pt", weights_only=False) for pp in (1, 2))


def _close_named(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], what: str, *, nonzero: bool) -> float:
    assert got.keys() == want.keys(), f"{what}: names differ: {sorted(got.keys() ^ want.keys())}"
    worst = 0.0
    for name, w in want.items():
        scale = float(w.abs().max())
        if nonzero:
            assert scale > 0, f"{what}: {name} is all zeros (the comparison would prove nothing)"
        err = float((got[name].double() - w.double()).abs().max()) / max(scale, 1e-30)
        assert err <= REL, f"{what}: {name} rel err {err:.2e}"
        worst = max(worst, err)
    return worst


SFT_LR = 1e-3  # pp_parity.check_sft's run_sft step
REWARD_SCALE_METRICS = ("prm/reward_correct", "prm/reward_wrong")


def _close_reward_scale(a: float, b: float, rewards_a: torch.Tensor, rewards_b: torch.Tensor, what: str) -> None:
    """A class mean of the rows' summed token rewards R_b. Its terms nearly cancel (|mean| 2e-4 where the
    rows' |r| sum to far more), so a relative bound does not apply. Derived bound instead: the mean of the rows'
    sums moves by at most the largest row's summed |difference| of token rewards between the two runs, plus the
    fp32 rounding of summing T tokens and then B rows (n u, n = T + B, u = 2^-24, times the largest sum of |r|)."""
    row_err = float((rewards_a.double() - rewards_b.double()).abs().sum(-1).max())
    B, T = rewards_b.shape
    rounding = 2 * (T + B) * 2.0 ** -24 * float(rewards_b.double().abs().sum(-1).max())  # both runs round
    assert abs(a - b) <= row_err + rounding, f"{what}: PP=2 {a!r} vs PP=1 {b!r}, bound {row_err + rounding:.2e}"


def _close(a: float, b: float, what: str) -> None:
    assert abs(a - b) <= REL * max(abs(b), 1e-12), f"{what}: PP=2 {a!r} vs PP=1 {b!r}"


@pytest.mark.parametrize("name", ["qwen2_untied", "llama_tied"])
def test_pp2_training_passes_equal_pp1(results, name):
    pp1, pp2 = (r[name] for r in results)
    worst = {}
    # the batches really are packed into several micro-batches of different sizes, identically
    for part in ("policy", "prm", "sft"):
        tokens = pp1[part]["tokens"]
        assert tokens == pp2[part]["tokens"] and len(tokens) >= 2 and len(set(tokens)) >= 2, (part, tokens)
    assert len(pp1["policy"]["tokens"]) >= 4
    # every rank of the pipeline held the same batch state (broadcast from the last stage)
    assert pp2["policy"]["logp_same"] and pp2["prm"]["rewards_same"] and pp2["prm"]["metrics_same"]

    pol1, pol2 = pp1["policy"], pp2["policy"]
    assert (pol1["logp"] != 0).any()
    worst["logp"] = float((pol2["logp"] - pol1["logp"]).abs().max())
    assert worst["logp"] <= 1e-5, worst  # log-probs ~ -5: 1e-5 absolute is ~ 20 fp32 ulps
    _close(pol2["loss"], pol1["loss"], "policy loss")
    _close(pol2["clipped"], pol1["clipped"], "clipped token count")
    assert pol1["clipped"] > 0
    worst["policy_grads"] = _close_named(pol2["grads"], pol1["grads"], "policy grads", nonzero=True)
    _close(pol2["grad_norm"], pol1["grad_norm"], "policy grad norm")
    assert pol1["grad_norm"] > 1e-3 * 10, "the step must be clipped"
    worst["policy_weights"] = _close_named(pol2["weights"], pol1["weights"], "policy weights", nonzero=False)

    prm1, prm2 = pp1["prm"], pp2["prm"]
    _close(prm2["loss"], prm1["loss"], "PRM CE loss")
    worst["prm_grads"] = _close_named(prm2["grads"], prm1["grads"], "PRM grads", nonzero=True)
    for key, value in prm1["metrics"].items():
        if key in REWARD_SCALE_METRICS:
            _close_reward_scale(prm2["metrics"][key], value, prm2["rewards"], prm1["rewards"], key)
        else:
            _close(prm2["metrics"][key], value, f"prm metric {key}")
    worst["rewards"] = float((prm2["rewards"] - prm1["rewards"]).abs().max())
    assert worst["rewards"] <= 1e-6, worst
    assert prm1["rewards"].abs().max() > 0  # later PRM mini-batches were scored by an updated PRM
    worst["prm_weights"] = _close_named(prm2["weights"], prm1["weights"], "PRM weights", nonzero=False)

    sft1, sft2 = pp1["sft"], pp2["sft"]
    _close(sft2["loss"], sft1["loss"], "SFT loss")
    assert sft2["log"] == sft1["log"], (sft2["log"], sft1["log"])
    worst["sft_grads"] = _close_named(sft2["grads"], sft1["grads"], "SFT grads", nonzero=True)
    worst["sft_export"] = assert_close_after_one_adam_step(sft2["exported"], sft1["exported"], "SFT export", lr=SFT_LR, rel=REL)
    print(name, "worst errors:", worst)
