"""The truncated-importance-sampling path of advantage_stage (rollout.tis_cap > 0), at the value level.

With TIS, each valid token's advantage is multiplied by w = min(exp(old_logp - vllm_logp), cap), computed
here in float64 from the same inputs; padding gets 0 (every loss masks it). Tolerance: the stage's fp32
product of the fp32 advantage and the fp32 weight (exp to <= 2 ulp, one rounding of the product): within
8 u = 2^-21 of |A w|. A weight formed the other way round (vllm - old), an uncapped one, or TIS silently
off each move some advantage by far more.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest
import torch
from primeflow.trainer.config import Config
from primeflow.trainer.stages.advantage import advantage_stage

_spec = importlib.util.spec_from_file_location("_stage_helpers", Path(__file__).with_name("stage_helpers.py"))
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)

PRODUCT_REL = 2.0 ** -21


def _batch(seed: int):
    """(batch with vLLM log-probs, old log-probs, token rewards)"""
    batch = helpers.random_rollouts(seed)
    gen = torch.Generator().manual_seed(seed)
    mask = batch.response_mask
    vllm = torch.where(mask, -torch.rand(mask.shape, generator=gen) * 3, 0.0)
    old = torch.where(mask, vllm + (torch.rand(mask.shape, generator=gen) - 0.5) * 2.0, 0.0)  # ratios e^+-1
    rewards = torch.where(mask, torch.randn(mask.shape, generator=gen) * 0.1, 0.0)
    return dataclasses.replace(batch, vllm_logp=vllm), old, rewards


def _advantages(inputs, cap: float):
    batch, old, rewards = inputs
    config = Config()
    config.rollout.tis_cap = cap
    result = advantage_stage(batch, config, old_logp=old, token_rewards=rewards)
    return result.advantages, result.metrics.read()


@pytest.mark.parametrize("cap", [1.5, 2.0])
def test_tis_scales_each_valid_advantage_by_its_capped_ratio(seed, cap):
    inputs = _batch(seed)
    batch, old, _ = inputs
    plain, _ = _advantages(inputs, 0.0)
    weighted, metrics = _advantages(inputs, cap)
    mask = batch.response_mask
    ratio = torch.exp(old.double() - batch.vllm_logp.double())
    assert bool((ratio[mask] > cap).any()) and bool((ratio[mask] < 1).any())  # both cases exercised
    w64 = torch.where(mask, ratio.clamp(max=cap), 0.0)
    want = plain.double() * w64
    err = (weighted.double() - want).abs()
    assert bool((err <= PRODUCT_REL * want.abs()).all()), float((err / want.abs().clamp(min=1e-30)).max())
    assert bool((weighted[~mask] == 0).all())
    assert metrics["tis_weight_mean"] == pytest.approx(float(w64[mask].mean()), rel=1e-6)


def test_tis_off_leaves_the_advantages_alone(seed):
    inputs = _batch(seed)
    plain, metrics = _advantages(inputs, 0.0)
    assert "tis_weight_mean" not in metrics
    weighted, _ = _advantages(inputs, 2.0)
    mask = inputs[0].response_mask
    assert not torch.equal(plain[mask], weighted[mask])
