"""The PRIME stages against the spec, on real Megatron models (1-process gloo world, tiny checkpoint).

- The policy loss gradient equals an independent float64 reference (transformers forward, the PPO-clip
  formula of prime_spec 8 written here), for two very different packings: the aggregation does not depend
  on how rows are packed into micro-batches.
- The PRM loss at step 0 is ln 2 (PRM == ref), the `after` mode's rewards come from the pre-update PRM, and
  `before` scores with the updated one.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from primeflow.models import hf_state_dict, make_tiny_checkpoint
from primeflow.trainer.config import Config
from primeflow.trainer.stages.logprobs import batch_logprobs, micro_batch_plan
from primeflow.trainer.stages.optim_step import accumulate_grads
from primeflow.trainer.stages.policy import ppo_micro_loss
from primeflow.trainer.stages.prm import prm_stage, token_rewards
from primeflow.trainer.stages.results import PolicyTargets
from transformers import AutoModelForCausalLM

_spec = importlib.util.spec_from_file_location("_stage_helpers", Path(__file__).with_name("stage_helpers.py"))
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)

# fp32 Megatron gradients vs a float64 reference: the models suite's parity bound (tests/tolerances.py).
from tolerances import MODEL_PARITY_REL  # noqa: E402


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    helpers.init_world()
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=3)


def _reference_ppo_grads(ckpt, batch, old_BR, adv_BR, rows, *, clip, agg, temperature):
    """float64: transformers forward per row (no packing, no padding), PPO-clip per token, aggregated."""
    hf = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float64)
    per_row = []
    for i in rows:
        n_seq = int(batch.attention_mask[i].sum())
        ids = batch.input_ids[i:i + 1, :n_seq]
        P = int(batch.prompt_len[i])
        n = int(batch.response_mask[i].sum())
        logp_all = torch.log_softmax(hf(ids).logits[0].double() / temperature, dim=-1)
        logp = logp_all[P - 1:P - 1 + n].gather(-1, ids[0, P:P + n, None])[:, 0]
        ratio = torch.exp(logp - old_BR[i, :n].double())
        a = adv_BR[i, :n].double()
        tok = torch.maximum(-a * ratio, -a * ratio.clamp(1 - clip, 1 + clip))
        per_row.append(tok)
    if agg == "token-mean":
        loss = torch.cat(per_row).sum() / sum(t.numel() for t in per_row)
    else:
        loss = torch.stack([t.mean() for t in per_row]).mean()
    loss.backward()
    return {name: p.grad for name, p in hf.named_parameters()}


@pytest.mark.parametrize("agg", ["seq-mean-token-mean", "token-mean"])
def test_policy_gradient_matches_float64_reference_for_any_packing(ckpt, seed, agg):
    models, config = helpers.tiny_models(ckpt)
    config.ppo.agg = agg
    batch = helpers.random_rollouts(seed)
    g = torch.Generator().manual_seed(seed)
    current = batch_logprobs(models.policy, batch, budget=10_000)
    # old log-probs off by up to +-0.5 nats so that both clip sides are exercised
    targets = PolicyTargets(
        old_logp=torch.where(batch.response_mask, current + (torch.rand(current.shape, generator=g) - 0.5), 0.0),
        advantages=torch.randn(current.shape, generator=g))
    rows = list(range(batch.rows))
    want = _reference_ppo_grads(ckpt, batch, targets.old_logp, targets.advantages, rows,
                                clip=config.ppo.clip, agg=agg, temperature=config.rollout.temperature)
    results = []
    for budget in (10_000, 40):  # everything in one micro-batch vs micro-batches of 1-3 rows
        plan = micro_batch_plan(batch, rows, budget)
        assert sorted(r for mb in plan for r in mb) == rows
        accumulate_grads(models.policy, models.policy_optim, plan,
                         ppo_micro_loss(models.policy, batch, targets, config, rows))
        results.append((len(plan), hf_state_dict(models.policy, grads=True)))
    assert results[0][0] == 1 and results[1][0] >= 4, "the two packings must differ"
    for n_micro, got in results:
        for name, grad in got.items():
            scale = max(1.0, float(want[name].abs().max()))
            err = float((grad.double() - want[name]).abs().max()) / scale
            assert err <= MODEL_PARITY_REL, f"{name} ({n_micro} micro-batches): rel err {err:.2e}"


def _config(dtype: str) -> Config:
    """PRM and reference in one precision (validate() requires it): bf16 runs the PRM in Float16Module with
    fp32 masters and the reference as a plain bf16 model, which must give bitwise the same log-probs."""
    config = helpers.frozen_reference_config()
    config.model.params_dtype = config.model.ref_dtype = dtype
    return config


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_prm_loss_is_ln2_at_step0_and_after_mode_scores_with_pre_update_prm(ckpt, seed, dtype):
    models, config = helpers.tiny_models(ckpt, _config(dtype))
    config.prm.update = "after"
    config.prm.mini_batch_size = 4  # 3 PRM optimizer steps over the 12 responses
    config.prm.optim.lr = 1e-3
    batch = helpers.random_rollouts(seed)
    old_logp = batch_logprobs(models.policy, batch, budget=10_000)
    before = [p.detach().clone() for p in models.prm.parameters()]
    scores = prm_stage(models, batch, config, old_logp=old_logp)
    metrics, rewards = scores.metrics.read(), scores.token_rewards
    # first mini-batch: PRM == ref exactly, so its CE is ln 2 and its rewards are exactly 0
    assert rewards[:4].abs().max() == 0.0
    # later mini-batches are scored by a PRM that already took 1-2 steps: rewards move
    assert rewards[4:][batch.response_mask[4:]].abs().max() > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, models.prm.parameters(), strict=True))
    assert math.isfinite(metrics["prm_loss"]) and abs(metrics["prm_loss"] - math.log(2)) < 0.05


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_prm_none_mode_keeps_loss_exactly_ln2_and_before_mode_scores_with_updated_prm(ckpt, seed, dtype):
    models, config = helpers.tiny_models(ckpt, _config(dtype))
    batch = helpers.random_rollouts(seed)
    old_logp = batch_logprobs(models.policy, batch, budget=10_000)
    config.prm.update = "none"
    scores = prm_stage(models, batch, config, old_logp=old_logp)
    assert scores.token_rewards.abs().max() == 0.0
    # ln 2 in fp32, exactly
    assert scores.metrics.read()["prm_loss"] == float(torch.tensor(math.log(2), dtype=torch.float32))
    config.prm.update, config.prm.optim.lr = "before", 1e-3
    rewards, mask = prm_stage(models, batch, config, old_logp=old_logp).token_rewards, batch.response_mask
    # unlike `after`, even the first PRM mini-batch is scored by the already-updated PRM: nonzero rewards
    assert rewards[:4][mask[:4]].abs().max() > 0


def test_token_reward_granularity():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    prm = torch.tensor([[-1.0, -2.0, -0.5, 7.0], [-3.0, 9.0, 9.0, 9.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, 1.0], [-1.0, 1.0, 1.0, 1.0]])
    tok = token_rewards(prm, ref, mask, beta=0.1, granularity="token")
    assert torch.allclose(tok, torch.tensor([[0.05, -0.1, 0.0, 0.0], [-0.2, 0.0, 0.0, 0.0]]))
    whole = token_rewards(prm, ref, mask, beta=0.1, granularity="whole")
    assert torch.allclose(whole, torch.tensor([[0.0, 0.0, -0.05, 0.0], [-0.2, 0.0, 0.0, 0.0]]))
