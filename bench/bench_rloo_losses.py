"""rloo_advantages, ppo_clip_loss (fwd+bwd) and prm_ce_loss (fwd+bwd): reference eager vs primeflow.

Run (from the repo root, after `make install`):
    .venv/bin/pytest bench/bench_rloo_losses.py --benchmark-only --benchmark-json bench/results/<name>.json
Providers: "reference" (primeflow.kernels.reference, autograd), "compile" (torch.compile of the reference;
only with PRIMEFLOW_BENCH_COMPILE=1, since compiling costs minutes on a 2-core machine) and "primeflow"
(the public op: Triton on CUDA; on CPU the torch path, which for rloo_advantages *is* the reference and
for the losses is the one-pass loss+gradient autograd.Function).
Shapes (PRIMEFLOW_BENCH_B / _T / _K override): the advantage over a step's batch B=256 rows (64 prompts x
K=4) of T=1024 tokens; the losses over a micro-batch of 16 rows x 1024 tokens. Inputs run on CUDA if
present. extra_info records the path, the bytes the op must read, and the peak extra host memory.
"""

from __future__ import annotations

import os

import primeflow.kernels as K
import pytest
import torch
from device import peak_extra_memory, synchronized
from primeflow.kernels import reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
B = int(os.environ.get("PRIMEFLOW_BENCH_B", 256))
T = int(os.environ.get("PRIMEFLOW_BENCH_T", 1024))
GROUP = int(os.environ.get("PRIMEFLOW_BENCH_K", 4))
MICRO_B = 16


def _providers(ref_fn, ours_fn):
    providers = {"reference": ref_fn, "primeflow": ours_fn}
    if os.environ.get("PRIMEFLOW_BENCH_COMPILE") == "1":
        providers["compile"] = torch.compile(ref_fn)
    return providers


def _ragged_mask(generator, b, t):
    lengths = torch.randint(t // 4, t + 1, (b,), generator=generator)
    return (torch.arange(t)[None, :] < lengths[:, None]).to(DEVICE)


def _record(benchmark, group, provider, path, bytes_read, fn):
    _, extra = peak_extra_memory(fn)
    benchmark.group = group
    benchmark.extra_info.update(
        provider=provider,
        path=path,
        device=DEVICE,
        bytes_read=bytes_read,
        peak_extra_bytes=extra,
        threads=torch.get_num_threads(),
    )
    benchmark.pedantic(synchronized(fn), rounds=20, iterations=1, warmup_rounds=2)


RLOO_PROVIDERS = _providers(reference.rloo_advantages, K.rloo_advantages)


@pytest.mark.parametrize("gamma", [1.0, 0.95])
@pytest.mark.parametrize("provider", list(RLOO_PROVIDERS))
def test_rloo_advantages(benchmark, provider, gamma):
    generator = torch.Generator().manual_seed(0)
    rewards = torch.randn(B, T, generator=generator).to(DEVICE)
    outcome = (torch.rand(B, generator=generator) > 0.5).float().to(DEVICE)
    mask = _ragged_mask(generator, B, T)
    fn = RLOO_PROVIDERS[provider]

    def call():
        return fn(rewards, outcome, mask, group_size=GROUP, gamma_process=gamma)

    call()  # warm-up (compiles once)
    path = K.rloo_advantages_backend(rewards) if provider == "primeflow" else provider
    _record(
        benchmark,
        f"rloo_advantages B={B} T={T} K={GROUP} gamma={gamma}",
        provider,
        path,
        rewards.numel() * 4 + mask.numel(),
        call,
    )


PPO_PROVIDERS = _providers(reference.ppo_clip_loss, K.ppo_clip_loss)
PRM_PROVIDERS = _providers(reference.prm_ce_loss, K.prm_ce_loss)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
@pytest.mark.parametrize("provider", list(PPO_PROVIDERS))
def test_ppo_clip_loss_fwd_bwd(benchmark, provider, agg):
    generator = torch.Generator().manual_seed(0)
    old = (-torch.rand(MICRO_B, T, generator=generator) * 3).to(DEVICE)
    logp = (old + 0.2 * torch.randn(MICRO_B, T, generator=generator).to(DEVICE)).requires_grad_(True)
    adv = torch.randn(MICRO_B, T, generator=generator).to(DEVICE)
    mask = _ragged_mask(generator, MICRO_B, T)
    fn = PPO_PROVIDERS[provider]

    def call():
        loss = fn(logp, old, adv, mask, agg=agg)
        loss.backward()
        return loss

    call()
    path = K.ppo_clip_loss_backend(logp) if provider == "primeflow" else provider
    _record(
        benchmark,
        f"ppo_clip_loss fwd+bwd B={MICRO_B} T={T} {agg}",
        provider,
        path,
        logp.numel() * 12 + mask.numel(),
        call,
    )


@pytest.mark.parametrize("provider", list(PRM_PROVIDERS))
def test_prm_ce_loss_fwd_bwd(benchmark, provider):
    generator = torch.Generator().manual_seed(0)
    ref = (-torch.rand(MICRO_B, T, generator=generator) * 3).to(DEVICE)
    prm = (ref + 0.2 * torch.randn(MICRO_B, T, generator=generator).to(DEVICE)).requires_grad_(True)
    outcome = torch.rand(MICRO_B, generator=generator).to(DEVICE)
    mask = _ragged_mask(generator, MICRO_B, T)
    fn = PRM_PROVIDERS[provider]

    def call():
        loss = fn(prm, ref, mask, outcome, beta=0.05)
        loss.backward()
        return loss

    call()
    path = K.prm_ce_loss_backend(prm) if provider == "primeflow" else provider
    _record(
        benchmark,
        f"prm_ce_loss fwd+bwd B={MICRO_B} T={T}",
        provider,
        path,
        prm.numel() * 8 + mask.numel(),
        call,
    )
