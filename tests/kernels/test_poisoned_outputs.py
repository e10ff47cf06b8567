"""The CPU (PyTorch) kernel paths write every element of the buffers they allocate uninitialised.

`linear_logprob.cpu` and `logprob.torch_op` allocate their outputs and accumulators with torch.empty and
rely on writing each element exactly once (dh and dW are written by the first GEMM, not zero-filled). Fresh
memory is often zero, so a forgotten element can pass unnoticed; here every such allocation is filled with
NaN first (tests/poisoned.py), and the results must equal the unpoisoned ones bitwise.
"""

from __future__ import annotations

import pytest
import torch
from poisoned import nan_poisoned
from primeflow.kernels.linear_logprob import cpu as linear_cpu
from primeflow.kernels.logprob import torch_op


class _PoisonedTorch:
    """`torch` for one module, except that empty/empty_like return NaN-filled floating-point tensors."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def empty(*size, dtype=None, device=None, **kwargs):
        shape = size[0] if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
        t = torch.empty(*size, dtype=dtype, device=device, **kwargs)
        return nan_poisoned(tuple(shape), t.dtype, t.device) if t.is_floating_point() else t

    @staticmethod
    def empty_like(x, **kwargs):
        t = torch.empty_like(x, **kwargs)
        return nan_poisoned(tuple(t.shape), t.dtype, t.device) if t.is_floating_point() else t


def _linear(with_entropy: bool, gen: torch.Generator):
    # more rows and columns than one chunk, so every chunk boundary is crossed
    n, h, v = linear_cpu.ROWS_PER_CHUNK + 7, 24, linear_cpu.COLS_PER_CHUNK + 9
    hidden, weight = torch.randn(n, h, generator=gen), torch.randn(v, h, generator=gen) / 5
    labels = torch.randint(0, v, (n,), generator=gen)
    stats = linear_cpu.linear_stats(hidden, weight, labels, 0.9, with_entropy)
    m, ls, ent, _ = stats
    g, g_ent = torch.randn(n, generator=gen), (torch.randn(n, generator=gen) if with_entropy else None)
    grads = linear_cpu.linear_grad(linear_cpu.dz_fn, *linear_cpu.grad_chunking(n, hidden.device), g, g_ent, hidden,
                                   weight, labels, m, ls, ent, 0.9, True, True)
    return [t for t in (*stats, *grads) if t is not None]


def _logits(with_entropy: bool, gen: torch.Generator):
    n, v = 37, 300
    logits = torch.randn(n, v, generator=gen) * 3
    labels = torch.randint(0, v, (n,), generator=gen)
    stats = torch_op.token_stats(logits, labels, 0.9, with_entropy)
    m, ls, ent, _ = stats
    g, g_ent = torch.randn(n, generator=gen), (torch.randn(n, generator=gen) if with_entropy else None)
    grad = torch_op.token_grad(g, g_ent, logits, labels, m, ls, ent, 0.9)
    return [t for t in (*stats, grad) if t is not None]


@pytest.mark.parametrize("with_entropy", [False, True])
@pytest.mark.parametrize("module,run", [(linear_cpu, _linear), (torch_op, _logits)], ids=["linear", "logits"])
def test_every_allocated_element_is_written(monkeypatch, seed, module, run, with_entropy):
    if module is torch_op:
        monkeypatch.setattr(torch_op, "CHUNK_ELEMENTS", 1000)  # several row chunks
    clean = run(with_entropy, torch.Generator().manual_seed(seed))
    monkeypatch.setattr(module, "torch", _PoisonedTorch())
    poisoned = run(with_entropy, torch.Generator().manual_seed(seed))
    assert len(clean) == len(poisoned)
    for a, b in zip(clean, poisoned, strict=True):
        assert torch.isfinite(a).all() and torch.equal(a, b)
