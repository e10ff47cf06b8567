"""Value-level wiring of one PRIME step (issue 14, part 2): the real stages, in trainer/train.py:prime_step's
order (old log-probs -> prm_stage -> advantage_stage -> policy_stage), on fixed rollouts and a tiny
checkpoint, against an independent float64 re-implementation of the whole step (prime_step64.py, written
from prime_spec.md with transformers float64 models, one row at a time).

Compared: token rewards [B, R], the PRM CE loss, the PRM parameters after its AdamW step, the advantages
[B, R], pg_loss and the policy parameters after their AdamW step; for prm.update "after" and "before" and for
outcome-only RLOO (prime.mode="rloo"). The tolerances and their derivation are in prime_step64.py's header.

The PRM is perturbed before the step (identically for the reference): at step 0 PRM == ref, so `after`
mode's rewards would be exactly 0 and a zeroed or negated process term would be invisible.

Mutation checks: each of these, monkeypatched into the production code path, makes `compare` report a
mismatch: advantages negated, process rewards zeroed, PRM and reference swapped (weights, or the log-ratio's
arguments, on either PRM head), the accuracy-filter band inverted (complement, or low/high swapped).

The PRM stage runs its fused head (prm.fused_head, the default); the two-head path is compared too.
"""

from __future__ import annotations

import importlib.util
import random
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import primeflow.trainer.data.assembly as assembly
import primeflow.trainer.stages.advantage as advantage_mod
import primeflow.trainer.stages.prm as prm_mod
import primeflow.trainer.stages.prm_head as prm_head_mod
import pytest
import torch
from primeflow.trainer.config import Config
from primeflow.trainer.data import BOUND_TOL, PromptLoader, PromptRecord, group_means
from primeflow.trainer.data.assembly import GroupResults
from primeflow.trainer.stages.rollout import StageClock
from primeflow.trainer.train import collect_rollouts
from tolerances import record_bound_use


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


helpers = _load("stage_helpers")
step64 = _load("prime_step64")


_one_thread = helpers._one_thread  # module fixtures (stage_helpers.py)
ckpt = helpers.ckpt


def step_config(mode: str) -> Config:
    """mode: "after" / "before" (prm.update) or "rloo" (outcome-only). One PRM and one policy mini-batch over
    the whole batch (12 rows), so the policy's shuffle cannot change the result; lr 1e-3 so both models
    visibly move; rollout temperature 0.9 (the policy is scored at it, the PRM and ref are not: prime_spec
    3.2); a 2-step policy warmup, so the first policy step runs at lr / 2 (trainer/models_setup.py). The
    frozen SFT reference (the float64 reference models that one, prime_step64.py)."""
    c = helpers.frozen_reference_config()
    if mode == "rloo":
        c.prime.mode, c.prm.update = "rloo", "none"  # what config.validate sets for rloo
    else:
        c.prm.update = mode
    c.prm.mini_batch_size = c.ppo.mini_batch_size = 12
    c.ppo.epochs = 1
    c.prm.optim.lr = 1e-3
    c.ppo.optim.lr = 1e-3
    c.ppo.optim.warmup_steps = 2
    c.rollout.temperature = 0.9
    return c


def run_both(ckpt, seed: int, mode: str, mutate_models=None, *, fused_head: bool = True) -> tuple[dict, dict]:
    """(trainer's step, float64 reference's step) on helpers.random_rollouts(seed); fused_head=False runs the
    PRM stage's two-head path (stages/prm_head.py)."""
    config = step_config(mode)
    config.prm.fused_head = fused_head
    models, config = helpers.tiny_models(ckpt, config)
    batch = helpers.random_rollouts(seed)
    prm_state = step64.perturb_prm(models, seed) if mode != "rloo" else None
    if mutate_models is not None:
        mutate_models(models)
    got = step64.trainer_step(models, batch, config)
    # `before`: the rewards are the updated PRM's. The reference scores them with the trainer's updated
    # weights (in float64), whose update is itself compared with the reference's float64 AdamW step
    # ("prm_params"), so each link is checked once. (Scoring with the reference's own update instead agrees
    # too, but only to <= 3.6e-5 relative over 20 seeds: the few elements whose gradient is at the noise
    # level take Adam's first step (~ lr sign(g)) in either direction, so that chain sits close to REWARD_REL.)
    updated = got.get("prm_params") if mode == "before" else None
    want = step64.reference_step(ckpt, batch, config, prm_state=prm_state, updated_prm_state=updated)
    return got, want


# ------------------------------------------------------------------------------------------- the step
@pytest.mark.parametrize("mode,fused_head", [("after", True), ("before", True), ("rloo", True), ("after", False),
                                             ("before", False)])
def test_prime_step_matches_float64_reference(ckpt, seed, mode, fused_head):
    got, want = run_both(ckpt, seed, mode, fused_head=fused_head)
    errs = step64.errors(got, want)
    for name, (err, allowed) in errs.items():
        record_bound_use(err, allowed)
        print(f"{mode:6s} {name:14s} error {err:.3e}  allowed {allowed:.1e}")
    expected = {"advantages", "pg_loss", "policy_params"}
    if mode != "rloo":
        expected |= {"token_rewards", "prm_loss", "prm_params"}
        # the setup is not degenerate: process rewards are visible and the PRM moved
        assert float(want["token_rewards"].abs().max()) > 1e-2
        after, before = want["prm_params"], want["prm_params_before"]
        moved = max(float((after[k] - before[k]).abs().max()) for k in after)
        assert moved > 0.5 * want["prm_lr"]
    assert set(errs) == expected
    assert step64.compare(got, want) == []


# --------------------------------------------------------------------------------------- mutations
def _failed_names(failures: list[str]) -> set[str]:
    return {f.split(":", 1)[0] for f in failures}


@pytest.mark.parametrize("mode", ["after", "rloo"])
def test_compare_reports_negated_advantages(ckpt, seed, mode, monkeypatch):
    original = advantage_mod.rloo_advantages
    monkeypatch.setattr(advantage_mod, "rloo_advantages", lambda *a, **k: -original(*a, **k))
    failed = step64.compare(*run_both(ckpt, seed, mode))
    assert {"advantages", "pg_loss", "policy_params"} <= _failed_names(failed), failed


@pytest.mark.parametrize("mode", ["after", "before"])
def test_compare_reports_zeroed_process_rewards(ckpt, seed, mode, monkeypatch):
    original = prm_mod.place_rewards  # both PRM heads place their rewards through it
    monkeypatch.setattr(prm_mod, "place_rewards", lambda *a, **k: torch.zeros_like(original(*a, **k)))
    failed = step64.compare(*run_both(ckpt, seed, mode))
    assert {"token_rewards", "advantages", "policy_params"} <= _failed_names(failed), failed


def test_compare_reports_prm_and_reference_swapped(ckpt, seed):
    """The trainable PRM holds the reference's weights and the frozen ref the PRM's."""
    failed = step64.compare(*run_both(ckpt, seed, "after", mutate_models=step64.swap_prm_and_ref_weights))
    assert {"token_rewards", "prm_params", "advantages", "policy_params"} <= _failed_names(failed), failed


@pytest.mark.parametrize("fused_head", [True, False])
def test_compare_reports_swapped_log_ratio_arguments(ckpt, seed, monkeypatch, fused_head):
    """r = beta * (log pi_ref - log pi_phi): the two log-probs the wrong way round (two-head path: the tensors
    handed to token_rewards; fused head: the kernel's PRM and reference outputs, reward and sums negated)."""
    if fused_head:
        original = prm_head_mod.linear_prime_rewards

        def swapped(*a, **k):
            out = original(*a, **k)
            return out._replace(prm_logp=out.ref_logp, ref_logp=out.prm_logp, reward=-out.reward,
                                seq_reward_sum=-out.seq_reward_sum)

        monkeypatch.setattr(prm_head_mod, "linear_prime_rewards", swapped)
    else:
        original = prm_mod.token_rewards
        monkeypatch.setattr(prm_mod, "token_rewards", lambda prm, ref, *a, **k: original(ref, prm, *a, **k))
    failed = step64.compare(*run_both(ckpt, seed, "after", fused_head=fused_head))
    assert {"token_rewards", "advantages", "policy_params"} <= _failed_names(failed), failed


# --------------------------------------------------------------------------------- accuracy filter
K = 4
# Group score patterns (exact fractions; code scores are passed / min(tests, 10)). Kept by PRIME's [0.2, 0.8]
# band: the math means 1/4, 1/2, 3/4 and the code means exactly on the bounds, 1/5 and 4/5 (inclusive; 4/5
# arrives as float32 0.800000012 > 0.8). Dropped: 0, 1 and the nearest code means outside, 7/40 and 33/40.
_F = Fraction
KEPT = [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [_F(1, 5)] * 4, [_F(4, 5)] * 4, [1, 1, _F(3, 5), _F(3, 5)]]
DROPPED = [[0, 0, 0, 0], [1, 1, 1, 1], [_F(1, 10), _F(1, 5), _F(1, 5), _F(1, 5)],
           [_F(9, 10), _F(4, 5), _F(4, 5), _F(4, 5)], [0, 0, 0, _F(1, 2)], [1, 1, 1, _F(1, 2)]]


class FakeRollout:
    """generate_and_score for collect_rollouts: fixed scores per prompt (as a float32 tensor, as a verifier
    batch may arrive); records the prompts in generation order."""

    def __init__(self, scores: dict[str, list[Fraction]]) -> None:
        self.scores, self.generated = scores, []

    def begin_step(self, step, clock, *, policy_version) -> None:
        pass

    def __call__(self, records: list[PromptRecord]) -> GroupResults:
        self.generated.extend(records)
        flat = [float(s) for r in records for s in self.scores[r.uid]]
        return GroupResults(scores=torch.tensor(flat, dtype=torch.float32), payload=[r.uid for r in records])


def filter_mismatches(seed: int) -> list[str]:
    """Run collect_rollouts (trainer/train.py: config.filter -> assemble_step -> filter_groups) on 24 prompts,
    8 per fetch, 4 groups per step; compare with prime_spec 6.1/6.3 computed here: keep iff
    low <= mean <= high (exact rationals), the batch is the first 4 kept groups in generation order, fetching
    stops as soon as 4 passed, the surplus kept groups are requeued."""
    rng = random.Random(seed)
    patterns = [list(p) for p in (KEPT + DROPPED) * 2]  # 12 kept + 12 dropped
    rng.shuffle(patterns)
    for p in patterns:
        rng.shuffle(p)
    records = [PromptRecord(uid=f"p{i}", messages=[{"role": "user", "content": str(i)}], ability="math",
                            ground_truth="0", data_source="test") for i in range(len(patterns))]
    scores = {r.uid: [Fraction(s) for s in p] for r, p in zip(records, patterns, strict=True)}
    config = Config()
    config.rollout.n, config.data.prompts_per_step = K, 4
    config.logging.progress = False
    loader = PromptLoader(records, batch_size=8, seed=seed)
    rollout = FakeRollout(scores)
    quiet = SimpleNamespace(console=SimpleNamespace(print=lambda *args: None))
    # no vLLM engine: rollout.sleep_between_steps is off, so the hand-off never touches it
    t = SimpleNamespace(config=config, loader=loader, rollout=rollout, policy_version=0, engine=None, run=quiet)
    try:
        assembled = collect_rollouts(t, 1, StageClock())
    except Exception as error:  # a mutation may make the assembly fail outright: that is a mismatch too
        return [f"filter: collect_rollouts raised {type(error).__name__}: {error}"]
    low, high = Fraction(str(config.filter.low)), Fraction(str(config.filter.high))
    flat = [s for r in rollout.generated for s in scores[r.uid]]
    keep = step64.kept_groups_reference(flat, K, low, high)
    passed = [r.uid for r, k in zip(rollout.generated, keep, strict=True) if k]
    failures = []
    if list(assembled.payload) != passed[:4]:
        failures.append(f"filter: batch {list(assembled.payload)} != PRIME's {passed[:4]}")
    if [r.uid for r in loader.buffer] != passed[4:]:
        failures.append(f"filter: requeued {[r.uid for r in loader.buffer]} != {passed[4:]}")
    before_last = sum(keep[:len(rollout.generated) - 8])
    if before_last >= 4:
        failures.append(f"filter: fetched {len(rollout.generated) // 8} times, {before_last} groups passed "
                        "before the last fetch")
    return failures


def test_accuracy_filter_keeps_what_prime_keeps(seed):
    assert filter_mismatches(seed) == []


def _complement(original):
    """Keeps exactly the groups outside the band."""
    return lambda s, k, *, low, high: [not x for x in original(s, k, low=low, high=high)]


def _swapped_comparison(original):
    """Compares against the bounds the wrong way round: high <= mean <= low (keeps nothing for low < high)."""
    return lambda s, k, *, low, high: [high - BOUND_TOL <= m <= low + BOUND_TOL for m in group_means(s, k)]


@pytest.mark.parametrize("mutation", [_complement, _swapped_comparison])
def test_compare_reports_inverted_filter_band(seed, monkeypatch, mutation):
    monkeypatch.setattr(assembly, "filter_groups", mutation(assembly.filter_groups))
    assert filter_mismatches(seed) != []
