"""prm/reward_correct and prm/reward_wrong (trainer/stages/prm.py): the mean total implicit reward of the
correct and of the wrong responses, against a float64 recomputation from the stage's own rewards, on both
PRM head paths; a class with no response leaves its key out."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest
import torch
from primeflow.trainer.stages.logprobs import batch_logprobs
from primeflow.trainer.stages.prm import prm_stage, reward_scale
from primeflow.trainer.stages.step_metrics import DeviceMetrics

_spec = importlib.util.spec_from_file_location("_stage_helpers", Path(__file__).with_name("stage_helpers.py"))
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)
_one_thread = helpers._one_thread  # module fixtures (stage_helpers.py)
ckpt = helpers.ckpt


@pytest.mark.parametrize("fused", [True, False])
def test_class_means_of_the_stage_rewards(ckpt, fused):
    batch = helpers.random_rollouts(9)
    outcome = torch.zeros(batch.rows)
    outcome[[1, 4, 6, 11]] = 1.0
    batch = dataclasses.replace(batch, outcome=outcome)
    models, config = helpers.tiny_models(ckpt)
    config.prm.fused_head = fused
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # rewards away from 0
        for p in models.prm.parameters():
            p.mul_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
    scores = prm_stage(models, batch, config, old_logp=batch_logprobs(models.policy, batch, budget=10_000))
    R = scores.token_rewards.double().sum(-1)
    correct = outcome.bool()
    want_correct, want_wrong = float(R[correct].mean()), float(R[~correct].mean())
    assert abs(want_correct - want_wrong) > 1e-4  # the two classes are told apart by the check
    metrics = scores.metrics.read()
    assert metrics["prm/reward_correct"] == pytest.approx(want_correct, rel=1e-5, abs=1e-7)
    assert metrics["prm/reward_wrong"] == pytest.approx(want_wrong, rel=1e-5, abs=1e-7)


def test_an_empty_class_leaves_its_key_out():
    for outcome, want in (([0.0, 0.0], {"prm/reward_wrong": -1.5}), ([1.0, 1.0], {"prm/reward_correct": -1.5})):
        metrics = DeviceMetrics()
        reward_scale(metrics, torch.tensor([[-1.0, -1.0], [-1.0, 0.0]]), torch.tensor(outcome))
        assert metrics.read() == want  # metrics are numbers: no None, no NaN
