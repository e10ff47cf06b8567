"""The PRM stage on the fused head (prm.fused_head=true: trainer/stages/prm_head.py, one linear_prime_rewards
call per micro-batch for the PRM and the reference) against today's two-head path (prm.fused_head=false:
two linear_token_logprobs heads, the log-ratio in torch), on tiny fp32 Megatron models from one checkpoint,
for prm.update after/before/none and prime.granularity token/whole.

Compared: the token rewards [B, R], the PRM and reference log-probs, prm_loss, the PRM gradients at the
optimizer step (DDP's main_grad, read when the step runs) and the PRM parameters after it. The PRM is
perturbed first (identically on both sides): at step 0 PRM == ref and every reward is exactly 0 on both paths.
One PRM mini-batch over the batch (several micro-batches), so every `after` reward comes from the same PRM on
both sides. In `before` mode the rewards come from the updated PRM, whose elements with a gradient at the
rounding level may step either way (Adam's first step is ~lr * sign(g)), so there the fused stage's rewards
are compared with the two-head formula (token_rewards of batch_logprobs) on its own updated PRM, and the update
itself by its gradients and the parameters it leaves.

Tolerances (fp32 against fp32, same weights). Both paths run the same trunk GEMMs on the same packed
micro-batches (`before`'s reference: another packing, rounding-level differences in the hidden states); the
heads differ in their GEMM heights (the fused head scores the response tokens only) and in how (max, lse) is
merged, so each log-prob may be off by the fp32 rounding of its logits on either side:
  eps_lp = 2 * FP32_LOGIT_ULPS * 2^-24 * max|z| (tests/tolerances.py; max|z| measured on the batch, ~9),
  token reward: beta * 2 * eps_lp; a row's sum (granularity whole, and R_b of the CE): n_max times that;
  prm_loss: |d BCE / dR| <= 1, so n_max * beta * 2 * eps_lp;
  gradients: the CE gradient is sum_b c_b d(logp)/d(theta) with c_b = beta (sigmoid(R_b) - o_b) / B, and
  d(logp)/dz = onehot - p with p = exp(z - m - ls) off by ~eps_lp relative. An error dR in R_b moves c_b by
  dR / 4 over |sigmoid - o| >= 0.27 (|R_b| < 1 here), i.e. ~dR relative. dR <= n_max * beta * 2 eps_lp if all
  n_max roundings had one sign; independent, they add like sqrt(n_max) (as in prime_step64.py's header):
  ~sqrt(14) * 0.05 * 2 * 8 * 2^-24 * 2 * max|z| ~ 3e-7 * max|z|. GRAD_REL = 1e-5 of each tensor's largest
  entry covers max|z| up to ~30 (measured: <= 0.1 of GRAD_REL, ~1e-6, over 4 seeds x 4 modes with an update);
  parameters after the step: tolerances.adam_first_step_allowed with GRAD_REL (measured <= 0.30 of it).
Other measured worst cases (err / allowed): log-probs 0.18, token rewards 0.08, prm_loss 0.004.
A dropped beta, a wrong sign or a swapped model is off by O(1) of the quantity; the last test runs the
comparison with a backward that drops beta and expects it to fail.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import primeflow.trainer.stages.prm_head as prm_head
import pytest
import torch
from primeflow.models import hf_state_dict
from primeflow.models.hidden import final_hidden_states, output_weight
from primeflow.models.logprobs import pack_rows
from primeflow.trainer.config import Config
from primeflow.trainer.stages.logprobs import batch_logprobs, micro_batch_tensors
from primeflow.trainer.stages.prm import prm_stage, token_rewards
from tolerances import FP32_LOGIT_ULPS, adam_first_step_allowed, record_bound_use

_spec = importlib.util.spec_from_file_location("_stage_helpers", Path(__file__).with_name("stage_helpers.py"))
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)

LR = 1e-3
PERTURB = 0.1
GRAD_REL = 1e-5
MICRO_TOKENS = 80  # several micro-batches per PRM mini-batch


_one_thread = helpers._one_thread  # module fixtures (stage_helpers.py)
ckpt = helpers.ckpt


def _config(update: str, granularity: str, fused: bool) -> Config:
    c = helpers.frozen_reference_config()
    c.prm.update, c.prime.granularity, c.prm.fused_head = update, granularity, fused
    c.prm.mini_batch_size = 12  # one PRM mini-batch: every `after` reward comes from the pre-step PRM
    c.prm.optim.lr = LR
    c.train.micro_batch_tokens = MICRO_TOKENS
    return c


def _perturb(models, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in models.prm.parameters():
            p.mul_(1.0 + PERTURB * torch.randn(p.shape, generator=g))


def _run(ckpt, batch, update: str, granularity: str, fused: bool, seed: int, monkeypatch) -> dict:
    models, config = helpers.tiny_models(ckpt, _config(update, granularity, fused))
    assert prm_head.fused_head_supported(models, config) is fused
    _perturb(models, seed)
    grads: list[dict[str, torch.Tensor]] = []
    step = models.prm_optim.step

    def step_and_keep_grads():
        grads.append(hf_state_dict(models.prm, grads=True))
        return step()

    monkeypatch.setattr(models.prm_optim, "step", step_and_keep_grads)
    calls = []
    real_head = prm_head.linear_prime_rewards
    monkeypatch.setattr(prm_head, "linear_prime_rewards", lambda *a, **k: calls.append(1) or real_head(*a, **k))
    old_logp = batch_logprobs(models.policy, batch, budget=10_000)
    scores = prm_stage(models, batch, config, old_logp=old_logp)
    assert bool(calls) is fused  # the fused head ran exactly when it was chosen
    return {"models": models, "config": config, "scores": scores, "grads": grads,
            "params": hf_state_dict(models.prm)}


def _max_logit(run, batch) -> float:
    """max |z| over both models' logits on the batch (the scale of the fp32 logit rounding)."""
    models = run["models"]
    rows = list(range(batch.rows))
    input_ids, _, lengths = micro_batch_tensors(batch, rows)
    packed = pack_rows(input_ids, [0] * len(rows), lengths)
    with torch.no_grad():
        return max(float((final_hidden_states(m, packed) @ output_weight(m).T).abs().max())
                   for m in (models.prm, models.ref))


def _check(what: str, got: torch.Tensor, want: torch.Tensor, allowed: float | torch.Tensor,
           worst: dict[str, float]) -> None:
    err = (got.double() - want.double()).abs()
    record_bound_use(err, allowed)
    ratio = float((err / allowed).max()) if err.numel() else 0.0
    key = what.split(" ")[0]
    worst[key] = max(worst.get(key, 0.0), ratio)
    assert ratio <= 1.0, f"{what}: fused vs two-head differ by {float(err.max()):.3e} (err/allowed {ratio:.2f})"


@pytest.mark.parametrize("granularity", ["token", "whole"])
@pytest.mark.parametrize("update", ["after", "before", "none"])
def test_fused_stage_equals_two_head_stage(ckpt, seed, update, granularity, monkeypatch):
    batch = helpers.random_rollouts(seed)
    fused = _run(ckpt, batch, update, granularity, True, seed, monkeypatch)
    two = _run(ckpt, batch, update, granularity, False, seed, monkeypatch)
    beta, mask = fused["config"].prime.beta, batch.response_mask
    n_max = max(batch.response_lens)
    eps_lp = 2 * FP32_LOGIT_ULPS * 2.0 ** -24 * _max_logit(fused, batch)
    f, t = fused["scores"], two["scores"]
    worst: dict[str, float] = {}
    _check("ref_logp", f.ref_logp, t.ref_logp, eps_lp, worst)
    for scores in (f, t):  # padding exactly 0 on both
        assert not scores.token_rewards[~mask].any() and not scores.prm_logp[~mask].any()
    token_allowed = beta * 2 * eps_lp * (n_max if granularity == "whole" else 1)
    if update == "before":
        # the update: its loss, gradients and the parameters it leaves; then the scoring of the fused
        # stage's own updated PRM against the two-head formula
        models = fused["models"]
        prm_BR = batch_logprobs(models.prm, batch, budget=MICRO_TOKENS)
        ref_BR = batch_logprobs(models.ref, batch, budget=MICRO_TOKENS)
        _check("prm_logp (updated PRM)", f.prm_logp, prm_BR, eps_lp, worst)
        want = token_rewards(prm_BR, ref_BR, mask, beta=beta, granularity=granularity)
        _check("token_rewards (updated PRM)", f.token_rewards, want, token_allowed, worst)
    else:
        _check("prm_logp", f.prm_logp, t.prm_logp, eps_lp, worst)
        _check("token_rewards", f.token_rewards, t.token_rewards, token_allowed, worst)
        assert f.token_rewards[mask].abs().max() > 0.01  # the perturbed PRM's rewards are visible
    loss_allowed = n_max * beta * 2 * eps_lp + 2.0 ** -22
    _check("prm_loss", torch.tensor(f.metrics.read()["prm_loss"]), torch.tensor(t.metrics.read()["prm_loss"]),
           loss_allowed, worst)
    assert len(fused["grads"]) == len(two["grads"]) == (0 if update == "none" else 1)
    for g_fused, g_two in zip(fused["grads"], two["grads"], strict=True):
        for name, want_g in g_two.items():
            _check(f"grad {name}", g_fused[name], want_g, GRAD_REL * max(float(want_g.abs().max()), 1e-30), worst)
            p_two = two["params"][name]
            _check(f"params {name}", fused["params"][name], p_two,
                   adam_first_step_allowed(want_g.double(), p_two.double(), lr=LR, grad_rel=GRAD_REL), worst)
    print(f"{update}/{granularity} worst err/allowed:", {k: round(v, 4) for k, v in worst.items()})


def test_a_backward_without_beta_fails_the_stage_comparison(ckpt, seed, monkeypatch):
    """Mutation: linear_prime_rewards' backward with d reward / d prm_logp = 1 instead of beta."""
    from primeflow.kernels.prime_rewards import function as fused_fn

    real = fused_fn.prm_logp_grad
    monkeypatch.setattr(fused_fn, "prm_logp_grad",
                        lambda g_logp, g_reward, g_sum, valid, seq, _beta, like: real(g_logp, g_reward, g_sum, valid,
                                                                                      seq, 1.0, like))
    with pytest.raises(AssertionError, match="grad"):
        test_fused_stage_equals_two_head_stage(ckpt, seed, "after", "token", monkeypatch)
