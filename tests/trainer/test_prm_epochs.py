"""prm.epochs: several PRM update passes over each batch (trainer/stages/prm.py). What must hold on both PRM
stage paths (the fused head and the two-head path):
- `after`: the rewards and prm_loss are the first pass's, bitwise what one pass gives (the further passes
  neither rescore nor enter the loss), while the further passes really train: the PRM's CE on the batch ends
  lower than after one pass, and every pass takes one optimizer step per mini-batch.
- `before`: the rewards come from the PRM after the last pass.
- a bad value names the key."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from primeflow.kernels import prm_ce_loss
from primeflow.trainer.config import ConfigError, load_config
from primeflow.trainer.stages.logprobs import batch_logprobs
from primeflow.trainer.stages.prm import prm_stage, token_rewards

_spec = importlib.util.spec_from_file_location("_stage_helpers", Path(__file__).with_name("stage_helpers.py"))
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)
_one_thread = helpers._one_thread  # module fixtures (stage_helpers.py)
ckpt = helpers.ckpt

BUDGET = 10_000


def _run(ckpt, batch, *, update: str, fused: bool, epochs: int):
    models, config = helpers.tiny_models(ckpt)
    config.prm.update, config.prm.fused_head, config.prm.epochs = update, fused, epochs
    config.prm.mini_batch_size = 4  # 3 mini-batches of the 12 rows
    config.prm.optim.lr = 1e-3
    config.train.micro_batch_tokens = 80  # several micro-batches per mini-batch
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():  # a PRM away from the reference, so the rewards are not all 0
        for p in models.prm.parameters():
            p.mul_(1.0 + 0.05 * torch.randn(p.shape, generator=g))
    steps = []
    optimizer_step = models.prm_optim.step
    models.prm_optim.step = lambda: steps.append(1) or optimizer_step()
    old_logp = batch_logprobs(models.policy, batch, budget=BUDGET)
    scores = prm_stage(models, batch, config, old_logp=old_logp)
    with torch.no_grad():
        prm_BR = batch_logprobs(models.prm, batch, budget=BUDGET)
        ref_BR = batch_logprobs(models.ref, batch, budget=BUDGET)
    ce_after = float(prm_ce_loss(prm_BR, ref_BR, batch.response_mask, batch.outcome, beta=config.prime.beta))
    return scores, len(steps), ce_after, (prm_BR, ref_BR, config)


@pytest.mark.parametrize("fused", [True, False])
def test_after_rewards_and_loss_are_the_first_pass_and_more_passes_train(ckpt, fused):
    batch = helpers.random_rollouts(3)
    one, steps_one, ce_one, _ = _run(ckpt, batch, update="after", fused=fused, epochs=1)
    three, steps_three, ce_three, _ = _run(ckpt, batch, update="after", fused=fused, epochs=3)
    assert torch.equal(three.token_rewards, one.token_rewards)
    assert three.metrics.read()["prm_loss"] == one.metrics.read()["prm_loss"]
    assert three.metrics.read()["prm_acc"] == one.metrics.read()["prm_acc"]
    assert (steps_one, steps_three) == (3, 9)  # one optimizer step per mini-batch and pass
    assert ce_three < ce_one - 1e-3  # the further passes fit the batch further (lr 1e-3, 6 more steps)


@pytest.mark.parametrize("fused", [True, False])
def test_before_scores_with_the_prm_after_the_last_pass(ckpt, fused):
    batch = helpers.random_rollouts(4)
    one, _, _, _ = _run(ckpt, batch, update="before", fused=fused, epochs=1)
    two, steps, _, (prm_BR, ref_BR, config) = _run(ckpt, batch, update="before", fused=fused, epochs=2)
    assert steps == 6
    want = token_rewards(prm_BR, ref_BR, batch.response_mask, beta=config.prime.beta,
                         granularity=config.prime.granularity)
    torch.testing.assert_close(two.token_rewards, want, rtol=0, atol=1e-6)  # rescored with another packing
    assert (two.token_rewards - one.token_rewards).abs().max() > 1e-4  # the second pass moved them


def test_bad_value_names_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("prm:\n  epochs: 0\n")
    with pytest.raises(ConfigError, match=r"prm.epochs: must be >= 1"):
        load_config(bad)
