"""prm.ce_weighting=class_balanced (trainer/stages/prm_ce.py): the formula against float64, the property it
exists for (at R = 0 the tokens correct and wrong responses share get no net push, which the mean CE gives
them whenever the classes are unequal), its edge cases, and its wiring into both PRM stage paths: the
reported prm_loss of an update is the balanced loss of that update's own rewards, and differs from the mean
CE on an imbalanced mini-batch."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from pathlib import Path

import pytest
import torch
from primeflow.kernels import prm_ce_terms
from primeflow.trainer.config import Config, ConfigError, load_config
from primeflow.trainer.stages.logprobs import batch_logprobs
from primeflow.trainer.stages.prm import prm_stage
from primeflow.trainer.stages.prm_ce import balanced_ce_sum, class_weights

_spec = importlib.util.spec_from_file_location("_stage_helpers", Path(__file__).with_name("stage_helpers.py"))
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)
_one_thread = helpers._one_thread
ckpt = helpers.ckpt


def _truth64(R: torch.Tensor, o: torch.Tensor) -> float:
    R, o = R.double(), o.double()
    pos, neg = o.sum(), (1 - o).sum()
    lp, ln = torch.nn.functional.logsigmoid(R), torch.nn.functional.logsigmoid(-R)
    if pos == 0:
        return float(-(ln * (1 - o)).sum() / neg)
    if neg == 0:
        return float(-(lp * o).sum() / pos)
    return float(-0.5 * (o * lp).sum() / pos - 0.5 * ((1 - o) * ln).sum() / neg)


@pytest.mark.parametrize("n", [1, 5, 64])
def test_matches_float64_on_soft_and_hard_labels(n, generator):
    R = torch.randn(n, generator=generator) * 3
    for o in (torch.rand(n, generator=generator), (torch.rand(n, generator=generator) < 0.3).float(),
              torch.ones(n), torch.zeros(n)):
        got = float(balanced_ce_sum(R, o, class_weights(o)))
        assert got == pytest.approx(_truth64(R, o), rel=1e-6, abs=1e-7)


def test_no_net_push_on_shared_tokens_at_init_where_the_mean_ce_has_one():
    """At R = 0 a token shared by every response moves all R_b together: its gradient is sum_b dL/dR_b."""
    o = torch.tensor([1.0, 0, 0, 0, 0, 0, 1, 0, 0, 0])  # 20 % correct
    R = torch.zeros(10, requires_grad=True)
    balanced_ce_sum(R, o, class_weights(o)).backward()
    assert abs(float(R.grad.sum())) < 1e-7
    R.grad = None
    prm_ce_terms(R, o).mean().backward()  # the mean CE: 0.5 (n_wrong - n_correct) / n = +0.3 (push down)
    assert float(R.grad.sum()) == pytest.approx(0.5 * (8 - 2) / 10)


def test_equal_classes_are_the_mean_ce_and_shares_add_up(generator):
    R = torch.randn(8, generator=generator)
    o = torch.tensor([1.0, 0, 1, 0, 0, 1, 1, 0])
    w = class_weights(o)
    full = balanced_ce_sum(R, o, w)
    assert float(full) == pytest.approx(float(prm_ce_terms(R, o).mean()), rel=1e-6)
    parts = balanced_ce_sum(R[:3], o[:3], w) + balanced_ce_sum(R[3:], o[3:], w)  # micro-batches of it
    assert float(parts) == pytest.approx(float(full), rel=1e-6)


def test_config_key_and_its_allowed_values(tmp_path):
    assert Config().prm.ce_weighting == "mean"  # prime_spec 4.1 by default
    bad = tmp_path / "bad.yaml"
    bad.write_text("prm:\n  ce_weighting: balanced\n")
    with pytest.raises(ConfigError, match=r"prm.ce_weighting: 'balanced' is not allowed.*'mean', 'class_balanced'"):
        load_config(bad)


def _perturbed(ckpt, weighting: str, fused: bool):
    models, config = helpers.tiny_models(ckpt)
    config.prm.ce_weighting, config.prm.fused_head = weighting, fused
    config.prm.mini_batch_size = 12  # one PRM mini-batch: the reported loss is that update's loss
    config.train.micro_batch_tokens = 80  # several micro-batches
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in models.prm.parameters():
            p.mul_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
    return models, config


@pytest.mark.parametrize("fused", [True, False])
def test_stage_reports_the_balanced_loss_of_its_own_rewards(ckpt, fused):
    batch = helpers.random_rollouts(7)
    outcome = torch.zeros(batch.rows)
    outcome[[0, 5, 9]] = 1.0  # 3 of 12 correct: imbalanced
    batch = dataclasses.replace(batch, outcome=outcome)
    losses = {}
    for weighting in ("class_balanced", "mean"):
        models, config = _perturbed(ckpt, weighting, fused)
        old_logp = batch_logprobs(models.policy, batch, budget=10_000)
        scores = prm_stage(models, batch, config, old_logp=old_logp)
        R = scores.token_rewards.sum(-1)  # update=after: the rewards of the update's own forwards
        want = _truth64(R, outcome) if weighting == "class_balanced" else float(prm_ce_terms(R, outcome).mean())
        assert scores.metrics.read()["prm_loss"] == pytest.approx(want, rel=1e-5)
        assert R.abs().max() > 1e-3  # the perturbed PRM gives rewards away from 0
        losses[weighting] = scores.metrics.read()["prm_loss"]
    assert not math.isclose(losses["class_balanced"], losses["mean"], rel_tol=1e-3)
