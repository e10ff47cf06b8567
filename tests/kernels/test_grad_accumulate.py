"""The backward's GEMM accumulation (kernels/linear_logprob/cpu.py `_accumulate`, shared by the CPU twin and the
Triton path): in place into the fp32 accumulator, the first GEMM ignoring the accumulator's old contents.

bf16 operands: on CUDA one fp32-output tensor-core GEMM into the accumulator (not runnable here); on CPU the
widened fallback, tested against float64. The bound: bf16 x bf16 products are exact in fp32, so the error is
the fp32 summation of K products plus the add into the accumulator: (K + 1) fp32 ulps of |a| @ |b| + |acc|."""

from __future__ import annotations

import pytest
import torch
from primeflow.kernels.linear_logprob.cpu import _accumulate


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("transposed", [False, True])
def test_accumulate_in_place_against_float64(dtype, transposed, generator):
    rows, k, cols = 37, 130, 19
    a = torch.randn(rows, k, generator=generator).to(dtype)
    b = torch.randn(k, cols, generator=generator).to(dtype)
    if transposed:  # dz.T @ h: a transposed view as the first operand (dW's GEMM)
        a = torch.randn(k, rows, generator=generator).to(dtype).T
    big = torch.full((rows + 4, cols), float("nan"))  # garbage: the first GEMM must not read it
    acc = big[2:2 + rows]
    _accumulate(acc, a, b, first=True)
    want = a.double() @ b.double()
    scale = a.double().abs() @ b.double().abs()
    assert torch.isfinite(acc).all(), "the first GEMM read the accumulator's old contents"
    assert ((acc.double() - want).abs() <= (k + 1) * 2.0 ** -24 * scale).all()
    before = acc.clone()
    _accumulate(acc, a, b)
    want2 = before.double() + want
    assert ((acc.double() - want2).abs() <= (k + 2) * 2.0 ** -24 * (2 * scale + before.double().abs())).all()
    assert torch.isnan(big[:2]).all() and torch.isnan(big[-2:]).all(), "wrote outside the accumulator"
    # a dropped accumulation (acc = a @ b instead of acc += a @ b) fails the second check
    assert not ((want.float().double() - want2).abs() <= (k + 2) * 2.0 ** -24 * scale).all()
