"""bf16 weights with fp32 masters (Float16Module + megatron-core's optimizer), checked element by element
against a float64 AdamW step on the trainer's own fp32 gradients.

Derived bound for one fp32 AdamW step (torch's foreach AdamW, which megatron-core runs without TE/apex),
with u = 2^-24 (fp32 unit roundoff; |fl(x) - x| <= u |x|):
  * p-part: p * (1 - lr wd) rounds once and the factor itself is an fp32 scalar (2 u |p|); p + update
    rounds once (u |p_new|): <= 3 u max(|p|, |p_new|);
  * update lr * m_hat / (sqrt(v_hat) + eps), |m_hat / (sqrt(v_hat) + eps)| <= 1 on the first step: m (lerp
    weight 0.1 as fp32, 1 rounding), v (g*g, *0.001 as fp32, +: 3-4 roundings, halved by the sqrt) + sqrt, the
    division by sqrt(1 - beta2) as fp32, + eps, m / denom, step size lr / (1 - beta1) as fp32, the product:
    about 11 roundings: <= 12 u lr.
So |master - float64| <= 3 u max|p| + 12 u lr per element. A step taken on the bf16 weights (no masters),
a missing bias correction, decay applied twice or a wrong learning rate is off by >= 2^-9 |p| or ~lr.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from primeflow.models import make_tiny_checkpoint
from primeflow.trainer.config import Config, OptimConfig, ParallelConfig
from primeflow.trainer.models_setup import trained_model
from primeflow.trainer.stages.logprobs import batch_logprobs, micro_batch_plan
from primeflow.trainer.stages.optim_step import accumulate_grads
from primeflow.trainer.stages.policy import ppo_micro_loss
from primeflow.trainer.stages.results import PolicyTargets

_spec = importlib.util.spec_from_file_location("_stage_helpers", Path(__file__).with_name("stage_helpers.py"))
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)

LR, WD, BETAS, EPS = 1e-3, 0.01, (0.9, 0.999), 1e-8
U32 = 2.0**-24  # fp32 unit roundoff


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    helpers.init_world()
    return make_tiny_checkpoint(tmp_path_factory.mktemp("mp") / "tiny", seed=5)


def _adamw_first_step64(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    p, g = p.double(), g.double()
    m_hat = (1 - BETAS[0]) * g / (1 - BETAS[0])
    v_hat = (1 - BETAS[1]) * g * g / (1 - BETAS[1])
    return p * (1 - LR * WD) - LR * m_hat / (v_hat.sqrt() + EPS)


def test_bf16_step_updates_fp32_masters_and_rounds_them_into_the_weights(ckpt, seed):
    config = Config()
    model, optim, _ = trained_model(ckpt, role="policy", dtype="bfloat16",
                                    optim=OptimConfig(lr=LR, weight_decay=WD, betas=list(BETAS), grad_clip=0.0),
                                    parallel_cfg=ParallelConfig())
    batch = helpers.random_rollouts(seed)
    g = torch.Generator().manual_seed(seed)
    current = batch_logprobs(model, batch, budget=10_000)
    targets = PolicyTargets(
        old_logp=torch.where(batch.response_mask, current + (torch.rand(current.shape, generator=g) - 0.5), 0.0),
        advantages=torch.randn(current.shape, generator=g))
    rows = list(range(batch.rows))
    accumulate_grads(model, optim, micro_batch_plan(batch, rows, 40),
                     ppo_micro_loss(model, batch, targets, config, rows))

    inner = optim._chained()
    pairs = [(w, m) for ws, ms in zip(inner.float16_groups, inner.fp32_from_float16_groups, strict=True)
             for w, m in zip(ws, ms, strict=True)]
    assert pairs and all(w.dtype == torch.bfloat16 and m.dtype == torch.float32 for w, m in pairs)
    before = [(w.detach().clone(), m.detach().clone(), w.main_grad.detach().clone()) for w, m in pairs]
    for w, m, grad in before:
        assert torch.equal(m, w.float())        # masters start as the exact upcast of the bf16 weights
        assert grad.dtype == torch.float32      # DDP accumulates in fp32 (grad_reduce_in_fp32)
    assert any(bool(grad.abs().max() > 0) for _, _, grad in before)

    optim.step()
    worst = 0.0
    for (w, m), (w0, m0, grad) in zip(pairs, before, strict=True):
        want = _adamw_first_step64(m0, grad)
        scale = torch.maximum(m0.double().abs(), want.abs())
        allowed = 3 * U32 * scale + 12 * U32 * LR
        err = (m.double() - want).abs()
        assert bool((err <= allowed).all()), f"master off the float64 AdamW step by {float(err.max()):.2e}"
        worst = max(worst, float((err / allowed).max()))
        assert torch.equal(w.detach(), m.detach().to(torch.bfloat16))  # weights = bf16 rounding of masters
        assert not torch.equal(m, m0)
    print(f"worst error / bound: {worst:.3f}")
