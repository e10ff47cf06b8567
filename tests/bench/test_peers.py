"""The GPU peers that the benchmark suites time (bench/peers.py) compute what their rows claim.

`liger_linear_token_logprobs` is the `liger` provider of bench/bench_linear_logprobs.py on CUDA. Liger's
kernels are Triton, so on this CPU machine they run under TRITON_INTERPRET=1 (the same kernel source that
compiles for the GPU): its log-probs and its gradients through reduction="none" (Liger defers them to
backward and folds in the per-token upstream gradient) are compared with float64 ground truth
(tests/reference64.py), by the project's rule: no further from float64 than PyTorch's own fp32 computation,
times 2, plus the fp32 floors of tests/tolerances.py. A sign slip (loss instead of -loss), a wrong label
column or an upstream gradient applied per chunk instead of per token fails these.
"""

from __future__ import annotations

import importlib
import os
import sys

import pytest
import torch
from reference64 import linear_token_logprobs64, linear_token_logprobs_grads64
from tolerances import assert_close_to_truth, assert_not_worse_than_torch

USES_TRITON_INTERPRETER = True  # tests/conftest.py keeps TRITON_INTERPRET=1 for this module's tests only
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _liger_interpreted() -> None:
    """triton.jit decides interpreted vs compiled when a kernel is decorated (module import): make Liger's
    cross-entropy kernels interpreted on a machine without CUDA, reloading them if something imported them
    compiled first."""
    import liger_kernel.ops.cross_entropy as ce
    if type(ce.liger_cross_entropy_kernel).__name__ != "InterpretedFunction":
        importlib.reload(ce)
        importlib.reload(sys.modules["liger_kernel.ops.fused_linear_cross_entropy"])


@pytest.fixture(scope="module")
def peers(bench_module):
    """bench.peers, with Liger's kernels interpreted on CPU; the interpreter switches are restored after."""
    pytest.importorskip("liger_kernel")
    if DEVICE == "cuda":
        yield bench_module("peers")
        return
    from triton import knobs
    previous_env, previous_knob = os.environ.get("TRITON_INTERPRET"), knobs.runtime.interpret
    os.environ["TRITON_INTERPRET"] = "1"
    knobs.runtime.interpret = True
    try:
        _liger_interpreted()
        yield bench_module("peers")
    finally:
        knobs.runtime.interpret = previous_knob
        if previous_env is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = previous_env


def _inputs(n: int, h: int, v: int, generator: torch.Generator):
    hidden = torch.randn(n, h, generator=generator)
    weight = torch.randn(v, h, generator=generator) * (3 / h**0.5)  # logits of std ~3: a peaked softmax
    labels = torch.randint(0, v, (n,), generator=generator)
    labels[0], labels[-1] = 0, v - 1  # the first and last vocabulary columns
    return hidden.to(DEVICE), weight.to(DEVICE), labels.to(DEVICE)


def _torch_fp32(hidden, weight, labels):
    return torch.log_softmax(hidden @ weight.T, dim=-1).gather(1, labels[:, None]).squeeze(1)


@pytest.mark.parametrize("n, h, v", [(7, 32, 70), (33, 48, 257)])  # V not a power of two / > one block
def test_liger_logprobs_match_float64(peers, generator, n, h, v):
    hidden, weight, labels = _inputs(n, h, v, generator)
    with torch.no_grad():
        got = peers.liger_linear_token_logprobs(hidden, weight, labels)
        torch_fp32 = _torch_fp32(hidden, weight, labels)
    truth, _ = linear_token_logprobs64(hidden.cpu(), weight.cpu(), labels.cpu())
    assert got.dtype == torch.float32 and got.shape == (n,)
    assert (got <= 0).all(), "log-probs must be <= 0 (a sign slip returns the loss)"
    assert_close_to_truth(got.cpu(), truth, torch.float32, what="liger logp")
    assert_not_worse_than_torch(got.cpu(), torch_fp32.cpu(), truth, torch.float32, what="liger logp")


def test_liger_gradients_match_float64(peers, generator):
    """Random per-token upstream gradients (the suite uses .sum(), i.e. all ones; random ones also catch a
    gradient that is not scaled per token)."""
    n, h, v = 9, 32, 130
    hidden, weight, labels = _inputs(n, h, v, generator)
    upstream = torch.randn(n, generator=generator).to(DEVICE)
    grads = {}
    for name, fn in (("liger", peers.liger_linear_token_logprobs), ("torch", _torch_fp32)):
        hd, wd = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        (fn(hd, wd, labels) * upstream).sum().backward()
        grads[name] = (hd.grad.cpu(), wd.grad.cpu())
    truth = linear_token_logprobs_grads64(hidden.cpu(), weight.cpu(), labels.cpu(), upstream.cpu(), None)
    for i, what in enumerate(("dhidden", "dweight")):
        assert_not_worse_than_torch(grads["liger"][i], grads["torch"][i], truth[i], torch.float32,
                                    what=f"liger {what}")
        # and close in absolute terms: the fp32 GEMM error scale of these magnitudes
        scale = truth[i].abs().max().item()
        assert (grads["liger"][i].double() - truth[i]).abs().max().item() <= 1e-5 * max(scale, 1.0), what
