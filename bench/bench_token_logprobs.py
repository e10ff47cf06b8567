"""token_logprobs: primeflow (C++ op on CPU, Triton on CUDA) vs torch eager vs torch.compile, forward and
forward+backward.

Run (from the repo root, after `make install`):
    .venv/bin/pytest bench/bench_token_logprobs.py --benchmark-only --benchmark-json bench/results/<name>.json
Shape: N=4096 rows, V=151936 (Qwen2's vocabulary); PRIMEFLOW_BENCH_N / PRIMEFLOW_BENCH_V override it.
Inputs live on CUDA when it is available (timed calls synchronize), else on the CPU. Each case also records
the peak extra memory of one call in extra_info (host RSS on CPU, allocator peak on CUDA: bench/device.py).
"""

from __future__ import annotations

import os

import primeflow.kernels as K
import pytest
import torch
from device import DEVICE, peak_extra_memory, synchronized

N = int(os.environ.get("PRIMEFLOW_BENCH_N", 4096))
V = int(os.environ.get("PRIMEFLOW_BENCH_V", 151936))
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def eager(logits_NV: torch.Tensor, labels_N: torch.Tensor) -> torch.Tensor:
    """The baseline every RL framework starts from: full fp32 log_softmax, then gather."""
    return torch.log_softmax(logits_NV.float(), dim=-1).gather(-1, labels_N[:, None]).squeeze(-1)


compiled = torch.compile(eager, dynamic=False)


def primeflow(logits_NV: torch.Tensor, labels_N: torch.Tensor) -> torch.Tensor:
    return K.token_logprobs(logits_NV, labels_N)


PROVIDERS = {"eager": eager, "compile": compiled, "primeflow": primeflow}


@pytest.fixture(scope="module", params=list(DTYPES))
def inputs(request):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(N, V, generator=generator).mul_(4).to(DEVICE, DTYPES[request.param])
    labels = torch.randint(0, V, (N,), generator=generator).to(DEVICE)
    return request.param, logits, labels


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_forward(benchmark, inputs, provider):
    dtype_name, logits, labels = inputs
    fn = synchronized(PROVIDERS[provider])
    with torch.no_grad():
        fn(logits, labels)  # warm-up (compiles once for torch.compile)
        _, extra = peak_extra_memory(lambda: fn(logits, labels))
        benchmark.group = f"forward {dtype_name} N={N} V={V}"
        benchmark.extra_info.update(provider=provider, device=DEVICE, peak_extra_bytes=extra,
                                    bytes_read=logits.numel() * logits.element_size(), threads=torch.get_num_threads(),
                                    path=K.token_logprobs_backend(logits).value if provider == "primeflow" else
                                    provider)
        benchmark.pedantic(fn, args=(logits, labels), rounds=3, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_forward_backward(benchmark, inputs, provider):
    dtype_name, logits, labels = inputs
    fn = PROVIDERS[provider]
    leaf = logits.detach().requires_grad_(True)

    @synchronized
    def step():
        leaf.grad = None
        fn(leaf, labels).sum().backward()

    step()  # warm-up
    leaf.grad = None  # so the peak below includes allocating the gradient, as in a training step
    _, extra = peak_extra_memory(step)
    benchmark.group = f"forward+backward {dtype_name} N={N} V={V}"
    # The gradient itself ([N, V] in the logits dtype) is part of every provider's peak: the floor is
    # N * V * element size.
    benchmark.extra_info.update(provider=provider, device=DEVICE, peak_extra_bytes=extra,
                                threads=torch.get_num_threads())
    benchmark.pedantic(step, rounds=2, iterations=1, warmup_rounds=0)
