"""prime_token_rewards (the fused three-model PRIME scorer) vs the unfused primeflow path it replaces (three
`linear_token_logprobs` calls) vs the naive eager/torch.compile head, scoring only (no grad).

The issue-3 goal: "one launch, within 10 % of the time of the single-model linear_token_logprobs calls it
replaces" = the `primeflow` / `separate` time ratio, best read from test_paired_vs_separate (<= 1.10).

Run (from the repo root, after `make install`):
    .venv/bin/pytest bench/bench_prime_rewards.py --benchmark-only \
        --benchmark-json bench/results/<name>.json
Shape: N=1024 rows, H=896 (Qwen2.5-0.5B), V=32768 by default (42 s on the quiet 2-core dev machine);
PRIMEFLOW_BENCH_FULL=1 selects N=4096, V=151936 (Qwen2's vocabulary); PRIMEFLOW_BENCH_N/_H/_V override each,
PRIMEFLOW_BENCH_ROUNDS the timed rounds, PRIMEFLOW_BENCH_COMPILE=0 drops the torch.compile provider.
fp32 on CPU, bf16 on CUDA (PRIMEFLOW_BENCH_DTYPE=bf16|fp32 overrides; with TRITON_INTERPRET=1 and a tiny shape
this runs the GPU kernels' numerics gate on the CPU, e.g. PRIMEFLOW_BENCH_N=100 _H=32 _V=300: ~1 min).
Three models (policy, PRM, reference), each its own (hidden [N, H], weight [V, H]); one labels vector; a mask
with ~10 % of the tokens off; S = N/256 packed sequences of random lengths given as cu_seqlens
(so every provider also returns the per-sequence reward sums and valid-token counts).

Providers (PROVIDERS):
  primeflow = one `prime_token_rewards(labels, prm=, ref=, policy=, beta=, mask=, cu_seqlens=)` call
              (one Triton launch on CUDA; on CPU the chunked PyTorch path, i.e. the same three chunked
              GEMM passes as `separate`, so on CPU the two should tie);
  separate  = three `linear_token_logprobs` calls (fp32 [N] each), the reward formed from their outputs with
              torch ops, and the per-sequence sums/counts with torch.segment_reduce/cumsum;
  eager     = three [N, V] logits GEMMs + fp32 log_softmax + gather, the same reward and sums;
  compile   = torch.compile(eager) (dynamic=False; compiled once by the warm-up call).
Before anything is timed, every provider's outputs are checked against an independent fp32 reference
(logits of the inputs cast to fp32, row-chunked, torch.logsumexp; sums in float64) with the tolerances in
TOLERANCES, and primeflow against separate: a broken kernel fails the benchmark instead of producing a fast
number.
extra_info: provider, path (the backend primeflow used), device, dtype, N/H/V, models=3, S, flops
(2·N·H·V per model, 3 models; the report's throughput), peak_extra_bytes (bench/memory.py's peak extra RSS on
CPU, torch.cuda.max_memory_allocated above the allocation before the call on CUDA), logits_bytes (one
model's fp32 [N, V]), and for primeflow time/memory ratios against separate (measured earlier in the same
process). On CUDA every timed call ends with torch.cuda.synchronize().
test_paired_vs_separate alternates primeflow and separate round by round and records the minimum wall and
process-CPU seconds of each and their ratios: on a shared machine the load changes between sequential cases,
so the interleaved pair is the fair comparison (CPU seconds are what a busy neighbour inflates least).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import primeflow.kernels as K
import pytest
import torch
from device import DEVICE, interleaved_min_seconds, peak_extra_memory, synchronized

FULL = os.environ.get("PRIMEFLOW_BENCH_FULL") == "1"
N = int(os.environ.get("PRIMEFLOW_BENCH_N", 4096 if FULL else 1024))
H = int(os.environ.get("PRIMEFLOW_BENCH_H", 896))
V = int(os.environ.get("PRIMEFLOW_BENCH_V", 151936 if FULL else 32768))
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
DTYPE = DTYPES[os.environ.get("PRIMEFLOW_BENCH_DTYPE", "bf16" if DEVICE == "cuda" else "fp32")]
ROUNDS = int(os.environ.get("PRIMEFLOW_BENCH_ROUNDS", 2 if FULL else 3))
WITH_COMPILE = os.environ.get("PRIMEFLOW_BENCH_COMPILE", "1") != "0"
MODELS = ("policy", "prm", "ref")
BETA = 0.05
SEQ_LEN = 256  # mean packed-sequence length: S = ceil(N / SEQ_LEN) sequences
MASKED = 0.1  # fraction of tokens with mask 0

# Tolerances against the fp32 reference (abs, rel). The logits are fp32 accumulations of the same products
# in a different order (GEMM blocking, vocabulary chunks), |logit| ~ 2 here, lse ~ log V + 2: a few 1e-6
# absolute error in log-probs is expected, 1e-4 leaves margin without hiding a wrong row (a wrong label or
# a dropped chunk moves a log-prob by >> 1e-2). The reward is beta times differences of those terms; a
# sequence sum adds up its rewards (random cut points: a few times SEQ_LEN at most), so its tolerance is the
# per-token one times 2·SEQ_LEN. Measured (printed, and kept in extra_info): <= 3e-6 everywhere, fp32 and
# bf16 inputs alike. `eager`/`compile` on bf16 round the [N, V] logits to bf16 before the softmax
# (|logit| ~ 2-10 -> up to ~0.04 per logit; 2.4e-2 measured), so they are held to a bf16 tolerance instead.
TOLERANCES = {"logp": (1e-4, 1e-5), "reward": (BETA * 2e-4, 1e-5), "seq_reward_sum": (BETA * 2e-4 * 2 * SEQ_LEN, 1e-5)}
BF16_LOGITS_TOLERANCES = {"logp": (0.1, 1e-2), "reward": (BETA * 0.2, 1e-2),
                          "seq_reward_sum": (BETA * 0.2 * 2 * SEQ_LEN, 1e-2)}

Pair = tuple[torch.Tensor, torch.Tensor]


def _seq_sums(reward_N: torch.Tensor, mask_N: torch.Tensor, cu_seqlens: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the (masked) rewards fp32 [S], count of mask != 0 tokens int64 [S]) with plain torch ops."""
    cu = cu_seqlens.to(torch.int64)
    seq_sum = torch.segment_reduce(reward_N, "sum", lengths=cu.diff(), initial=0.0)
    csum = torch.cat([cu.new_zeros(1), (mask_N != 0).to(torch.int64).cumsum(0)])
    return seq_sum, csum[cu[1:]] - csum[cu[:-1]]


def _reward(prm_N: torch.Tensor, ref_N: torch.Tensor, mask_N: torch.Tensor) -> torch.Tensor:
    reward_N = BETA * (prm_N - ref_N)
    return torch.where(mask_N != 0, reward_N, torch.zeros_like(reward_N))


def primeflow(labels, models: dict[str, Pair], mask, cu_seqlens) -> tuple[torch.Tensor, ...]:
    out = K.prime_token_rewards(labels, prm=models["prm"], ref=models["ref"], policy=models["policy"],
                                beta=BETA, mask=mask, cu_seqlens=cu_seqlens)
    return out.policy_logp, out.prm_logp, out.ref_logp, out.reward, out.seq_reward_sum, out.seq_valid_count


def separate(labels, models: dict[str, Pair], mask, cu_seqlens) -> tuple[torch.Tensor, ...]:
    """The unfused primeflow path: one linear_token_logprobs per model, the reward from their fp32 outputs."""
    logp = {name: K.linear_token_logprobs(*models[name], labels) for name in MODELS}
    reward = _reward(logp["prm"], logp["ref"], mask)
    return (logp["policy"], logp["prm"], logp["ref"], reward, *_seq_sums(reward, mask, cu_seqlens))


def _eager_logp(hidden_NH: torch.Tensor, weight_VH: torch.Tensor, labels_N: torch.Tensor) -> torch.Tensor:
    logits_NV = hidden_NH @ weight_VH.T
    return torch.log_softmax(logits_NV.float(), dim=-1).gather(-1, labels_N[:, None]).squeeze(-1)


def eager(labels, models: dict[str, Pair], mask, cu_seqlens) -> tuple[torch.Tensor, ...]:
    """The naive head every framework starts from, three times: [N, V] logits, fp32 log_softmax, gather."""
    logp = {name: _eager_logp(*models[name], labels) for name in MODELS}
    reward = _reward(logp["prm"], logp["ref"], mask)
    return (logp["policy"], logp["prm"], logp["ref"], reward, *_seq_sums(reward, mask, cu_seqlens))


PROVIDERS: dict[str, Callable[..., tuple[torch.Tensor, ...]]] = {"eager": eager}
if WITH_COMPILE:
    PROVIDERS["compile"] = torch.compile(eager, dynamic=False)
PROVIDERS.update(separate=separate, primeflow=primeflow)  # primeflow last: its ratios use separate's numbers
OUTPUTS = ("policy_logp", "prm_logp", "ref_logp", "reward", "seq_reward_sum", "seq_valid_count")
RESULTS: dict[str, dict[str, float]] = {}


def _cu_seqlens(n: int, generator: torch.Generator) -> torch.Tensor:
    """S = ceil(n / SEQ_LEN) contiguous sequences of random lengths (some may be empty) covering [0, n)."""
    s = max(1, -(-n // SEQ_LEN))
    cuts = torch.sort(torch.randint(0, n + 1, (s - 1,), generator=generator)).values
    return torch.cat([torch.zeros(1, dtype=torch.int64), cuts, torch.full((1,), n, dtype=torch.int64)])


@pytest.fixture(scope="module")
def inputs() -> dict[str, Any]:
    generator = torch.Generator().manual_seed(0)
    models = {name: (torch.randn(N, H, generator=generator).to(DEVICE, DTYPE),
                     (torch.randn(V, H, generator=generator) * (2 / H**0.5)).to(DEVICE, DTYPE))
              for name in MODELS}
    labels = torch.randint(0, V, (N,), generator=generator).to(DEVICE)
    mask = (torch.rand(N, generator=generator) >= MASKED).to(DEVICE)
    return dict(labels=labels, models=models, mask=mask, cu_seqlens=_cu_seqlens(N, generator).to(DEVICE))


def reference_fp32(labels, models: dict[str, Pair], mask, cu_seqlens, rows: int = 1024
                   ) -> tuple[torch.Tensor, ...]:
    """Independent yardstick: each model's logits from the inputs cast to fp32 (row chunks bound memory),
    torch.logsumexp, the reward from (z_prm - z_ref) - (lse_prm - lse_ref); sums and counts in float64/int64
    with one slice per sequence."""
    z, lse = {}, {}
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # no TF32 on CUDA: this is the fp32 yardstick
    for name in MODELS:
        hidden, weight = models[name]
        w32 = weight.float()
        zs, ls = [], []
        for a in range(0, labels.shape[0], rows):
            logits = hidden[a:a + rows].float() @ w32.T
            zs.append(logits.gather(1, labels[a:a + rows, None]).squeeze(1))
            ls.append(torch.logsumexp(logits, dim=1))
        z[name], lse[name] = torch.cat(zs), torch.cat(ls)
    torch.set_float32_matmul_precision(precision)
    reward = BETA * ((z["prm"] - z["ref"]) - (lse["prm"] - lse["ref"]))
    reward = torch.where(mask != 0, reward, torch.zeros_like(reward))
    spans = list(zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist(), strict=True))
    seq_sum = torch.tensor([reward[a:b].double().sum().item() for a, b in spans])
    seq_cnt = torch.tensor([int((mask[a:b] != 0).sum()) for a, b in spans], dtype=torch.int64)
    return (*(z[n] - lse[n] for n in MODELS), reward, seq_sum, seq_cnt)


@pytest.fixture(scope="module")
def expected(inputs) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return reference_fp32(**inputs)


def check_outputs(provider: str, got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...],
                  tolerances: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Assert every output matches `want` within `tolerances`; returns the max abs error per output."""
    errors = {}
    for name, g, w in zip(OUTPUTS, got, want, strict=True):
        assert g is not None and g.shape == w.shape, f"{provider} {name}: shape {None if g is None else g.shape}"
        g, w = g.detach().cpu(), w.detach().cpu()
        if name == "seq_valid_count":
            assert torch.equal(g.to(torch.int64), w), f"{provider} {name} differs from the reference"
            continue
        atol, rtol = tolerances["logp" if name.endswith("logp") else name]
        g64, w64 = g.double(), w.double()
        errors[name] = float((g64 - w64).abs().max()) if g.numel() else 0.0
        assert torch.allclose(g64, w64, atol=atol, rtol=rtol), (
            f"{provider} {name}: max abs error {errors[name]:.3g} > atol {atol:.3g} (rtol {rtol:.0e})")
    return errors


def _tolerances(provider: str) -> dict[str, tuple[float, float]]:
    return BF16_LOGITS_TOLERANCES if provider in ("eager", "compile") and DTYPE != torch.float32 else TOLERANCES


def _timed(fn, inputs) -> Callable[[], tuple[torch.Tensor, ...]]:
    """One scoring call that returns when the device is done (bench/device.py synchronizes on CUDA)."""
    def call():
        with torch.no_grad():
            return fn(**inputs)
    return synchronized(call)


def _path(provider: str, labels: torch.Tensor) -> str:
    if provider == "primeflow":
        return f"prime_token_rewards:{K.prime_token_rewards_backend(labels).value}"
    if provider == "separate":
        return f"linear_token_logprobs:{K.linear_token_logprobs_backend(labels).value} x{len(MODELS)}"
    return provider


def _base_info() -> dict[str, Any]:
    return dict(kernel="prime_token_rewards", device=DEVICE, dtype=str(DTYPE), N=N, H=H, V=V, models=len(MODELS),
                beta=BETA, flops=2 * N * H * V * len(MODELS), threads=torch.get_num_threads(),
                logits_bytes=N * V * 4)


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_forward(benchmark, inputs, expected, provider):
    call = _timed(PROVIDERS[provider], inputs)
    errors = check_outputs(provider, call(), expected, _tolerances(provider))  # also the warm-up / compile
    if provider == "primeflow":  # the fused kernel must also agree with the unfused path it replaces
        check_outputs("primeflow vs separate", call(), _timed(separate, inputs)(), TOLERANCES)
    _, extra = peak_extra_memory(call)
    # the group must be set before pedantic(): pytest-benchmark copies it into the stats when they are created
    benchmark.group = f"prime_token_rewards forward {DEVICE} N={N} H={H} V={V} models=3"
    benchmark.pedantic(call, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    seconds = benchmark.stats.stats.min
    RESULTS[provider] = dict(seconds=seconds, extra=extra)
    info = dict(_base_info(), provider=provider, path=_path(provider, inputs["labels"]), peak_extra_bytes=extra,
                S=int(inputs["cu_seqlens"].numel() - 1), max_abs_error_vs_fp32_reference=errors)
    base = RESULTS.get("separate")
    if provider == "primeflow" and base:
        info.update(time_ratio_vs_separate=seconds / base["seconds"],
                    memory_ratio_vs_separate=extra / max(base["extra"], 1))
    benchmark.extra_info.update(info)
    print(f"\n{provider:9s} {seconds:8.3f} s  peak extra {extra / 2**20:9.1f} MiB  errors "
          + ", ".join(f"{k}={v:.1e}" for k, v in errors.items()))


def test_paired_vs_separate(benchmark, inputs, expected):
    """primeflow and separate alternated round by round; min wall and CPU seconds of each, and the ratios."""
    calls = {"separate": _timed(separate, inputs), "primeflow": _timed(primeflow, inputs)}
    outs = {name: call() for name, call in calls.items()}  # warm-up, and the numerical gate
    for name, out in outs.items():
        check_outputs(name, out, expected, TOLERANCES)
    check_outputs("primeflow vs separate", outs["primeflow"], outs["separate"], TOLERANCES)
    rounds = max(ROUNDS, 3)
    info = interleaved_min_seconds(calls, rounds)
    info.update(_base_info(), rounds=rounds, path=_path("primeflow", inputs["labels"]),
                wall_ratio=info["primeflow_wall_s"] / info["separate_wall_s"],
                cpu_ratio=info["primeflow_cpu_s"] / info["separate_cpu_s"], goal_ratio=1.10)
    benchmark.group = f"prime_token_rewards paired forward {DEVICE} N={N} H={H} V={V} models=3"
    benchmark.extra_info.update(info)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)  # the numbers live in extra_info
    print("\npaired: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                    for k, v in info.items()))
