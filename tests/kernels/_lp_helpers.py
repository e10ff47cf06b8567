"""Shared by the Triton / fused-head / PRIME-reward kernel tests: interpreter setup, adversarial inputs and
the
"PyTorch in the same dtype" baselines that tests/tolerances.py's ratio rule compares against.

Load it by path (tests/kernels is not a package; a bare `kernels` import would shadow HF's package):
    _h = load_helpers()  (see the snippet at the top of each test file)
"""

from __future__ import annotations

import importlib
import os
import sys

import torch


def ensure_interpreter() -> None:
    """Make the Triton kernels of primeflow.kernels run under TRITON_INTERPRET=1 on CPU tensors.

    triton.jit picks interpreter vs compiler when a kernel is *decorated*, i.e. when the module is imported.
    If another test module imported primeflow.kernels first without the variable, the kernel modules (and
    the launchers that bound their names) are reloaded so the tests exercise the real kernels, interpreted.

    On a CUDA host the calling module is skipped instead: setting the interpreter there would reload the
    kernels interpreted for every later module of the run (test_rl_ops_triton's CUDA checks included), so a
    GPU run would never execute a compiled kernel. There `make validate-kernels` runs the compiled kernels
    against float64 (scripts/gpu_smoke.py's kernels section) and test_rl_ops_triton runs on CUDA tensors.
    """
    if torch.cuda.is_available():
        import pytest

        pytest.skip("CUDA host: these are the Triton-interpreter checks of CPU hosts; the compiled kernels are "
                    "checked by `make validate-kernels` (scripts/gpu_smoke.py --skip-trainer)",
                    allow_module_level=True)
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    from triton import knobs
    knobs.runtime.interpret = True
    import primeflow.kernels.logprob.kernel as lp_kernel
    if type(lp_kernel.token_stats_fwd_kernel).__name__ == "InterpretedFunction":
        return
    for name in ("linear_logprob.kernel", "logprob.kernel", "prime_rewards.kernel",
                 "linear_logprob.triton_op", "logprob.triton_op"):
        importlib.reload(sys.modules[f"primeflow.kernels.{name}"])


def make_logits(n_rows: int, vocab: int, dtype: torch.dtype, gen: torch.Generator, *, scale: float = 3.0):
    """Random logits with the adversarial rows the kernels must survive, and labels that hit the edges."""
    logits = torch.randn(n_rows, vocab, generator=gen) * scale
    labels = torch.randint(0, vocab, (n_rows,), generator=gen)
    labels[0] = vocab - 1  # target in the last column
    if n_rows > 1:
        logits[1] += 1e4  # a large common offset must not cost precision
    if n_rows > 2:
        logits[2] = -logits[2].abs() - 50  # all-negative logits
    if n_rows > 3 and vocab > 2:
        logits[3, vocab // 2:] = float("-inf")  # a padded tail (vocab padding is -inf, never 0)
        labels[3] = 0
    return logits.to(dtype), labels


def make_linear(n_rows: int, hidden: int, vocab: int, dtype: torch.dtype, gen: torch.Generator, *,
                offsets: bool = False):
    """(hidden, weight, labels) with logits of O(3); labels hit the last column. With offsets, column 0 of
    hidden times column 0 of weight is a per-row constant: row 1 gets +1e4 on every logit (a common offset),
    row 2 gets -1e4 (all-negative logits)."""
    h = torch.randn(n_rows, hidden, generator=gen)
    w = torch.randn(vocab, hidden, generator=gen) / hidden ** 0.5 * 3
    if offsets:
        w[:, 0] = 100.0
        h[:, 0] = 0.0
        if n_rows > 1:
            h[1, 0] = 100.0
        if n_rows > 2:
            h[2, 0] = -100.0
    labels = torch.randint(0, vocab, (n_rows,), generator=gen)
    labels[0] = vocab - 1
    return h.to(dtype), w.to(dtype), labels


def make_dyadic_linear(n_rows: int, hidden: int, vocab: int, gen: torch.Generator):
    """fp32 (hidden, weight, labels) whose every GEMM is exact in fp32: hidden entries are multiples of 1/8 in
    [-2, 2], weight entries multiples of 1/16 in [-1, 1], so each product is a multiple of 2^-7 and each
    partial sum has magnitude <= 2 * hidden, well inside 2^24 * 2^-7 for any hidden < 2^15. Any summation
    order then gives the same logits, bit for bit.

    Why the batch-invariance tests need it: under TRITON_INTERPRET=1, `tl.dot` is numpy's BLAS sgemm, and
    OpenBLAS's AVX2 micro-kernels (AMD hosts, or Intel without AVX-512) sum a row in an order that depends on
    the row's position inside the tile (main vs edge micro-kernel): the same row at another position differs
    in the last bit (seen on every seed on a 2-core AMD EPYC). That is a property of the host's BLAS, not of
    the kernel. With exact GEMMs, what is left is the kernel's own arithmetic, which must not depend on the
    other rows or on N. (A compiled kernel issues the same wgmma sequence for every row of a tile, so there the
    claim holds for any inputs.)"""
    h = torch.randint(-16, 17, (n_rows, hidden), generator=gen).float() / 8
    w = torch.randint(-16, 17, (vocab, hidden), generator=gen).float() / 16
    labels = torch.randint(0, vocab, (n_rows,), generator=gen)
    labels[0] = vocab - 1
    return h, w, labels


def naive_linear(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
                 return_entropy: bool = False):
    """What a user writes in PyTorch, in the inputs' dtype: the GEMM in that dtype, softmax math in fp32."""
    logits = (hidden @ weight.T).float() / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(1, labels[:, None]).squeeze(1)
    if not return_entropy:
        return logp
    return logp, -(logp_all.exp() * logp_all).sum(-1)


def naive_logits(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
                 return_entropy: bool = False):
    """log_softmax in the logits' own dtype (PyTorch's low-precision baseline), returned as fp32."""
    logp_all = torch.log_softmax(logits / temperature, dim=-1)
    logp = logp_all.gather(1, labels[:, None]).squeeze(1).float()
    if not return_entropy:
        return logp
    finite = logp_all.masked_fill(torch.isinf(logp_all), 0)
    return logp, (-(logp_all.exp() * finite).sum(-1)).float()
