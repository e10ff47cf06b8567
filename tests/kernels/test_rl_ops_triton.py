"""The Triton paths of rloo_advantages, ppo_clip_loss and prm_ce_loss vs float64 truth.

Where they run: on CUDA tensors when a GPU is present, else on CPU tensors under the Triton interpreter.
Triton decides interpreter-or-compiler when a kernel is *decorated* (i.e. when primeflow.kernels is
imported), so TRITON_INTERPRET=1 must be set before that import and cannot be switched per test. Hence:

- `TRITON_INTERPRET=1 pytest tests/kernels/test_rl_ops_triton.py` runs the checks in this process;
- a plain `pytest ...` run on a machine without CUDA collects only `test_under_triton_interpreter`, which
  re-runs this file in a child pytest with TRITON_INTERPRET=1 set in its environment (about 20 s here).

Shapes are tiny and tiles are forced to 16 positions (MAX_BLOCK_T) in half of the cases, so the per-row
tile loops, carries and partial sums are exercised with several tiles per row.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tolerances import assert_close_to_truth, prm_ce_cancel_floor

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
USES_TRITON_INTERPRETER = INTERPRETED  # tests/conftest.py keeps the variable set for this module's tests
RUN_HERE = INTERPRETED or torch.cuda.is_available()
DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRETED else "cpu"


if not RUN_HERE:

    def test_under_triton_interpreter():
        """Re-run this file in a child pytest with TRITON_INTERPRET=1 set before triton is imported."""
        repo = Path(__file__).resolve().parents[2]
        pytest_bin = Path(sys.executable).with_name("pytest")
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        proc = subprocess.run(
            [str(pytest_bin), str(Path(__file__).resolve()), "-q", "-p", "no:cacheprovider"],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        print(proc.stdout[-4000:])
        assert proc.returncode == 0, f"interpreted run failed:\n{proc.stdout[-8000:]}\n{proc.stderr[-4000:]}"

else:
    import primeflow.kernels as K
    from primeflow.kernels.ppo_loss import op as ppo_op
    from primeflow.kernels.prm_loss import op as prm_op
    from primeflow.kernels.rloo import op as rloo_op

    def _load_truth():
        spec = importlib.util.spec_from_file_location(
            "_primeflow_tests_rl_truth64", Path(__file__).with_name("rl_truth64.py")
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    truth = _load_truth()

    @pytest.fixture(params=["default-tile", "tile16"])
    def tiles(request, monkeypatch):
        if request.param == "tile16":
            for module in (rloo_op, ppo_op, prm_op):
                monkeypatch.setattr(module, "MAX_BLOCK_T", 16)
        return request.param

    def ragged(generator, b, t, *, allow_empty):
        lengths = torch.randint(0 if allow_empty else 1, t + 1, (b,), generator=generator)
        lengths[0], lengths[-1] = (0 if allow_empty else 1), t
        return torch.arange(t)[None, :] < lengths[:, None]

    def test_dispatch_is_triton():
        x = torch.zeros(2, 2, device=DEVICE)
        assert (
            K.rloo_advantages_backend(x) == K.ppo_clip_loss_backend(x) == K.prm_ce_loss_backend(x) == "triton"
        )

    RLOO_CONFIGS = [
        dict(form="prime"),
        dict(form="paper"),
        dict(
            form="prime",
            reward_norm="none",
            whiten=False,
            gamma_process=0.9,
            gamma_outcome=0.7,
            process_coef=5.0,
            outcome_coef=0.5,
        ),
        dict(form="paper", reward_norm="none", whiten=True, gamma_process=0.95),
        dict(form="prime", reward_norm="batch_norm", whiten=False, gamma_outcome=0.8),
    ]

    @pytest.mark.parametrize("cfg", RLOO_CONFIGS, ids=lambda c: "-".join(str(v) for v in c.values()))
    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
    def test_rloo_matches_truth(generator, tiles, cfg, dtype):
        for groups, k, t in ((2, 2, 37), (2, 4, 21), (2, 2, 1)):
            b = groups * k
            mask = ragged(generator, b, t, allow_empty=False)
            rewards = torch.randn(b, t, generator=generator).to(dtype)
            rewards = torch.where(mask, rewards, torch.full_like(rewards, float("nan")))  # padding ignored
            outcome = torch.randint(0, 5, (b,), generator=generator).float() / 4
            out = K.rloo_advantages(
                rewards.to(DEVICE), outcome.to(DEVICE), mask.to(DEVICE), group_size=k, **cfg
            )
            want = truth.rloo_truth(rewards, outcome, mask, group_size=k, **cfg)
            assert_close_to_truth(
                out.cpu(), want, torch.float32, what=f"triton rloo {tiles} K={k} T={t} {cfg}"
            )

    def test_rloo_nan_propagates(generator, tiles):
        mask = ragged(generator, 6, 20, allow_empty=False)
        rewards, outcome = torch.randn(6, 20, generator=generator), torch.rand(6, generator=generator)
        rewards[3, 0] = float("nan")
        args = (rewards.to(DEVICE), outcome.to(DEVICE), mask.to(DEVICE))
        assert K.rloo_advantages(*args, group_size=2).isnan().all()
        local = K.rloo_advantages(*args, group_size=2, reward_norm="none", whiten=False).cpu()
        assert (
            local[2:4][mask[2:4]].isnan().all()
            and not local[:2].isnan().any()
            and not local[4:].isnan().any()
        )

    @pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
    def test_ppo_matches_truth(generator, tiles, agg, dtype):
        b, t = 5, 37
        old = -torch.rand(b, t, generator=generator) * 3
        logp = (old + 0.3 * torch.randn(b, t, generator=generator)).to(dtype)
        adv = torch.randn(b, t, generator=generator)
        mask = ragged(generator, b, t, allow_empty=True)
        x = logp.to(DEVICE).requires_grad_(True)
        loss, stats = K.ppo_clip_loss(
            x, old.to(DEVICE), adv.to(DEVICE), mask.to(DEVICE), agg=agg, return_stats=True
        )
        (grad,) = torch.autograd.grad(loss * 3.0, x)
        want_loss, want_grad, want_clipfrac, want_kl = truth.ppo_truth(
            logp.detach(), old, adv, mask, clip=0.2, agg=agg
        )
        assert_close_to_truth(loss.cpu(), torch.tensor(want_loss), torch.float32, what=f"triton ppo {agg}")
        assert_close_to_truth(grad.cpu(), 3.0 * want_grad, dtype, grad=True, what=f"triton ppo grad {agg}")
        assert_close_to_truth(
            stats.clipfrac.cpu(), torch.tensor(want_clipfrac), torch.float32, what="clipfrac"
        )
        assert_close_to_truth(stats.ppo_kl.cpu(), torch.tensor(want_kl), torch.float32, what="ppo_kl")
        nan_logp = logp.clone()
        nan_logp[-1, 0] = float("nan")
        assert K.ppo_clip_loss(nan_logp.to(DEVICE), old.to(DEVICE), adv.to(DEVICE), mask.to(DEVICE)).isnan()

    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
    def test_prm_ce_matches_truth(generator, tiles, dtype):
        b, t = 6, 37
        ref = -torch.rand(b, t, generator=generator) * 3
        prm = (ref + 0.5 * torch.randn(b, t, generator=generator)).to(dtype)
        mask = ragged(generator, b, t, allow_empty=True)
        outcome = torch.randint(0, 5, (b,), generator=generator).float() / 4
        x = prm.to(DEVICE).requires_grad_(True)
        loss = K.prm_ce_loss(x, ref.to(DEVICE), mask.to(DEVICE), outcome.to(DEVICE), beta=0.5)
        (grad,) = torch.autograd.grad(loss * 0.5, x)
        want_loss, want_grad = truth.prm_ce_truth(prm.detach(), ref, mask, outcome, beta=0.5)
        assert_close_to_truth(loss.cpu(), torch.tensor(want_loss), torch.float32, what="triton prm loss")
        # soft labels (outcome in quarters) can cancel sigmoid(R) - outcome below R's fp32 rounding
        cancel_floor = prm_ce_cancel_floor(prm, ref, mask, beta=0.5, scale=0.5)
        assert_close_to_truth(grad.cpu(), 0.5 * want_grad, dtype, grad=True, what="triton prm grad",
                              extra_atol=cancel_floor)
        nan_prm = prm.clone()
        nan_prm[-1, 0] = float("nan")
        assert K.prm_ce_loss(
            nan_prm.to(DEVICE), ref.to(DEVICE), mask.to(DEVICE), outcome.to(DEVICE), beta=0.5
        ).isnan()
