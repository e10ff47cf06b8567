"""linear_token_logprobs (fused lm_head + log-prob): reference eager vs reference torch.compile vs primeflow,
forward and forward+backward (grads w.r.t. hidden and weight).

Run (from the repo root, after `make install`):
    .venv/bin/pytest bench/bench_linear_logprobs.py --benchmark-only \
        --benchmark-json bench/results/<name>.json
Shape: modest by default (N=1024, H=896, V=32768); PRIMEFLOW_BENCH_FULL=1 selects the Qwen2.5-0.5B head at
N=4096 (H=896, V=151936), the shape of the CPU goal in issue 3; PRIMEFLOW_BENCH_N/_H/_V override each.
fp32 on CPU (what the CPU path is for), bf16 on CUDA. Providers: eager, compile, primeflow, and on CUDA
`liger` (liger-kernel's fused linear cross entropy, reduction="none", in bench/peers.py; its log-probs and
gradients are checked against float64 by tests/bench/test_peers.py under TRITON_INTERPRET=1).
extra_info records the path, peak extra host memory
of one call (bench/memory.py), the bytes of the [N, V] logits the reference materialises, the
gradient bytes every provider must return, and time/memory ratios against torch.compile (the primeflow case
runs last in each group, so the ratios are from the same process).
test_paired_vs_compile alternates torch.compile and primeflow calls round by round and records both wall and
process CPU time: on a shared machine the load changes between sequential cases, and the interleaved
minimum (and CPU seconds, which a busy neighbour does not inflate) is the fair ratio.
"""

from __future__ import annotations

import os
import time

import primeflow.kernels as K
import pytest
import torch
from device import DEVICE, interleaved_min_seconds, peak_extra_memory, synchronized
from peers import liger_available, liger_linear_token_logprobs

FULL = os.environ.get("PRIMEFLOW_BENCH_FULL") == "1"
N = int(os.environ.get("PRIMEFLOW_BENCH_N", 4096 if FULL else 1024))
H = int(os.environ.get("PRIMEFLOW_BENCH_H", 896))
V = int(os.environ.get("PRIMEFLOW_BENCH_V", 151936 if FULL else 32768))
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32
ROUNDS = int(os.environ.get("PRIMEFLOW_BENCH_ROUNDS", 2 if FULL else 3))


def reference(hidden_NH: torch.Tensor, weight_VH: torch.Tensor, labels_N: torch.Tensor) -> torch.Tensor:
    """The naive head every framework starts from (the math of primeflow.kernels.reference, minus the input
    checks that would graph-break torch.compile): [N, V] logits, fp32 log_softmax, gather."""
    logits_NV = hidden_NH @ weight_VH.T
    return torch.log_softmax(logits_NV.float(), dim=-1).gather(-1, labels_N[:, None]).squeeze(-1)


compiled = torch.compile(reference, dynamic=False)


def primeflow(hidden_NH: torch.Tensor, weight_VH: torch.Tensor, labels_N: torch.Tensor) -> torch.Tensor:
    return K.linear_token_logprobs(hidden_NH, weight_VH, labels_N)


PROVIDERS = {"eager": reference, "compile": compiled}
if DEVICE == "cuda" and liger_available():  # Liger's kernels are Triton-only; its CPU run is a test, not a peer
    PROVIDERS["liger"] = liger_linear_token_logprobs
PROVIDERS["primeflow"] = primeflow  # last: its ratios use the peers' numbers from the same process
RESULTS: dict[tuple[str, str], dict] = {}


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(N, H, generator=generator).to(DEVICE, DTYPE)
    weight = (torch.randn(V, H, generator=generator) / H ** 0.5 * 2).to(DEVICE, DTYPE)
    labels = torch.randint(0, V, (N,), generator=generator).to(DEVICE)
    return hidden, weight, labels


def _forward_backward(fn, hidden, weight, labels):
    h = hidden.detach().requires_grad_()
    w = weight.detach().requires_grad_()
    fn(h, w, labels).sum().backward()
    return h.grad, w.grad


def _record(benchmark, provider: str, kind: str, call, hidden, weight) -> None:
    call = synchronized(call)
    call()  # warm-up (compiles once for torch.compile)
    _, extra = peak_extra_memory(call)
    start = time.perf_counter()
    # the group must be set before pedantic(): pytest-benchmark copies it into the stats when they are created
    benchmark.group = f"linear_token_logprobs {kind} {DEVICE} N={N} H={H} V={V}"
    benchmark.pedantic(call, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    seconds = benchmark.stats.stats.min if benchmark.stats else time.perf_counter() - start
    grads = (hidden.numel() + weight.numel()) * hidden.element_size() if kind == "forward+backward" else 0
    info = dict(provider=provider, device=DEVICE, dtype=str(DTYPE), N=N, H=H, V=V,
                threads=torch.get_num_threads(), peak_extra_bytes=extra, gradient_bytes=grads,
                peak_extra_beyond_gradients=extra - grads, logits_bytes=N * V * 4,
                path=K.linear_token_logprobs_backend(hidden).value if provider == "primeflow" else provider)
    RESULTS[(provider, kind)] = dict(seconds=seconds, extra=extra)
    base_case = RESULTS.get(("compile", kind))
    if provider == "primeflow" and base_case:
        info.update(time_ratio_vs_compile=seconds / base_case["seconds"],
                    memory_ratio_vs_compile=extra / max(base_case["extra"], 1))
    benchmark.extra_info.update(info)
    print(f"\n{kind:17s} {provider:9s} {seconds:8.3f} s  peak extra {extra / 2**30:7.3f} GiB "
          f"(beyond grads {(extra - grads) / 2**30:7.3f} GiB)")


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_forward(benchmark, inputs, provider):
    hidden, weight, labels = inputs
    fn = PROVIDERS[provider]

    def call():
        with torch.no_grad():
            return fn(hidden, weight, labels)

    _record(benchmark, provider, "forward", call, hidden, weight)


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_forward_backward(benchmark, inputs, provider):
    hidden, weight, labels = inputs
    fn = PROVIDERS[provider]
    _record(benchmark, provider, "forward+backward", lambda: _forward_backward(fn, hidden, weight, labels),
            hidden, weight)


@pytest.mark.parametrize("kind", ["forward", "forward+backward"])
def test_paired_vs_compile(benchmark, inputs, kind):
    hidden, weight, labels = inputs

    def make(fn):
        if kind == "forward":
            def call():
                with torch.no_grad():
                    return fn(hidden, weight, labels)
            return call
        return lambda: _forward_backward(fn, hidden, weight, labels)

    calls = {"compile": synchronized(make(compiled)), "primeflow": synchronized(make(primeflow))}
    for call in calls.values():
        call()  # warm-up / compile
    info = interleaved_min_seconds(calls, ROUNDS)
    info.update(wall_ratio=info["primeflow_wall_s"] / info["compile_wall_s"],
                cpu_ratio=info["primeflow_cpu_s"] / info["compile_cpu_s"], N=N, H=H, V=V, device=DEVICE,
                threads=torch.get_num_threads())
    benchmark.group = f"linear_token_logprobs paired {kind} {DEVICE} N={N} H={H} V={V}"
    benchmark.extra_info.update(info)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)  # the numbers live in extra_info
    print(f"\npaired {kind}: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in info.items()))
