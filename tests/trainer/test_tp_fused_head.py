"""The PRM stage at TP=2 (torchrun, 2 processes over gloo; tests/trainer/tp_fused_head.py runs it): the fused
head (prm.fused_head=true: one vocab-parallel linear_prime_rewards call per micro-batch, one all-gather in its
forward) equals the two-head path (prm.fused_head=false: two vocab-parallel linear_token_logprobs heads, the
log-ratio in torch), without and with sequence parallelism, for prm.update after and none: the token rewards,
both models' log-probs, prm_loss, the PRM gradients at the optimizer step and the PRM after it. Every TP rank
holds bitwise-identical scores.

Tolerances: those of test_prm_fused_head.py (TP=1, same comparison; its header derives them), with max|z|
measured on the batch over both models' logits (~12 here):
  eps_lp = 2 * FP32_LOGIT_ULPS * 2^-24 * max|z|; token reward beta * 2 * eps_lp; prm_loss
  n_max * beta * 2 * eps_lp + 2^-22; gradients GRAD_REL = 1e-5 of each tensor's largest entry; parameters
  after the step tolerances.adam_first_step_allowed with GRAD_REL.
TP adds the merge of two shards' pieces (rank order, exact up to fp32 rounding of the same kind) and, in the
backward, the all-reduce of d hidden over the two ranks (one more rounding per element): inside the same
bounds. Measured (seed 5): log-probs equal bitwise, token rewards <= 6e-8 (bound ~6e-7), gradients <= 8e-7 of
each tensor's largest entry (bound 1e-5). A dropped beta, a wrong sign, a label taken on the wrong shard or a
missing d hidden reduction is off by O(1) of the quantity.
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
from tolerances import FP32_LOGIT_ULPS, adam_first_step_allowed

pytestmark = [pytest.mark.multiproc, pytest.mark.slow]

_SCRIPT = Path(__file__).with_name("tp_fused_head.py")
GRAD_REL = 1e-5
LR = 1e-3  # tp_fused_head.LR
CASES = [(0, "after"), (1, "after"), (0, "none")]  # tp_fused_head.CASES: (sequence_parallel, prm.update)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    seed = int(os.environ.get("PRIMEFLOW_TEST_SEED", torch.randint(0, 2**31 - 1, ()).item()))
    print(f"seed={seed} (replay with PRIMEFLOW_TEST_SEED={seed})")
    root = tmp_path_factory.mktemp("tp_fused")
    # V = 320 splits evenly over TP = 2: no padded vocabulary (which keeps the two-head path)
    ckpt = make_tiny_checkpoint(root / "tiny", seed=3, vocab_size=320)
    out = root / "result.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(_SCRIPT),
           "--seed", str(seed), "--out", str(out), str(ckpt)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                          env=fresh_world_env(OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return torch.load(out, weights_only=False)


def _check(what: str, got: torch.Tensor, want: torch.Tensor, allowed: float | torch.Tensor) -> float:
    err = (got.double() - want.double()).abs()
    ratio = float((err / allowed).max()) if err.numel() else 0.0
    assert ratio <= 1.0, f"{what}: fused vs two-head differ by {float(err.max()):.3e} (err/allowed {ratio:.2f})"
    return ratio


@pytest.mark.parametrize("sp,update", CASES, ids=[f"sp{sp}-{u}" for sp, u in CASES])
def test_tp2_fused_stage_equals_two_head_stage(results, sp, update):
    f, t = results[f"sp={sp} {update} fused"], results[f"sp={sp} {update} two-head"]
    assert f["fused_calls"] > 0 and f["tp_group_given"], "the fused head did not run vocab-parallel"
    assert t["fused_calls"] == 0
    assert f["scores_same_on_tp_ranks"] and t["scores_same_on_tp_ranks"]
    mask, beta, n_max = t["mask"], t["beta"], max(t["response_lens"])
    eps_lp = 2 * FP32_LOGIT_ULPS * 2.0 ** -24 * max(f["max_logit"], t["max_logit"])
    worst = {"ref_logp": _check("ref_logp", f["ref_logp"], t["ref_logp"], eps_lp),
             "prm_logp": _check("prm_logp", f["prm_logp"], t["prm_logp"], eps_lp),
             "token_rewards": _check("token_rewards", f["token_rewards"], t["token_rewards"], beta * 2 * eps_lp)}
    assert not f["token_rewards"][~mask].any() and not f["prm_logp"][~mask].any()
    assert f["token_rewards"][mask].abs().max() > 0.01  # the perturbed PRM's rewards are visible
    loss_allowed = n_max * beta * 2 * eps_lp + 2.0 ** -22
    worst["prm_loss"] = _check("prm_loss", torch.tensor(f["metrics"]["prm_loss"]),
                               torch.tensor(t["metrics"]["prm_loss"]), loss_allowed)
    assert len(f["grads"]) == len(t["grads"]) == (1 if update == "after" else 0)
    for g_fused, g_two in zip(f["grads"], t["grads"], strict=True):
        assert g_fused.keys() == g_two.keys()
        for name, want_g in g_two.items():
            scale = float(want_g.abs().max())
            assert scale > 0, f"{name}: zero gradient (the comparison would prove nothing)"
            worst[f"grad {name}"] = _check(f"grad {name}", g_fused[name], want_g, GRAD_REL * scale)
            p_two = t["params"][name]
            worst[f"params {name}"] = _check(
                f"params {name}", f["params"][name], p_two,
                adam_first_step_allowed(want_g.double(), p_two.double(), lr=LR, grad_rel=GRAD_REL))
    by_kind: dict[str, float] = {}
    for key, ratio in worst.items():
        by_kind[key.split(" ")[0]] = max(by_kind.get(key.split(" ")[0], 0.0), ratio)
    print(f"sp={sp} {update} worst err/allowed:", {k: round(v, 4) for k, v in by_kind.items()})
