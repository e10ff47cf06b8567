"""`store_rounded` (kernels/_triton_utils.py), the fp32 -> bf16 store every kernel's bf16 output goes through,
equals round-to-nearest-even (torch's conversion) bitwise on every non-NaN fp32 bit pattern tried, and keeps
every NaN a NaN.

Why NaN payloads matter: CUDA's canonical NaN is 0x7FFFFFFF (the interpreter's numpy makes 0x7FC00000).
Adding the rounding carry 0x7FFF + 1 to 0x7FFFFFFF wrapped into the sign bit and stored -0.0: a NaN gradient
became a zero on a GPU while every CPU test passed. Inputs: 2^16 random bit patterns (all exponents, both
signs, NaN payloads among them) plus the edge cases (ties, the largest finite, denormals, +-inf, NaNs with
the highest payloads).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

_spec = importlib.util.spec_from_file_location("_lp_helpers", Path(__file__).with_name("_lp_helpers.py"))
_h = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_h)
_h.ensure_interpreter()
USES_TRITON_INTERPRETER = True  # tests/conftest.py keeps TRITON_INTERPRET=1 for this module's tests only

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from primeflow.kernels._triton_utils import store_rounded  # noqa: E402

EDGES = [0x7FFFFFFF, 0xFFFFFFFF, 0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FBFFFFF, 0x7F800000, 0xFF800000,
         0x7F7FFFFF, 0x7F7F8000, 0x7F7F7FFF, 0x3F808000, 0x3F818000, 0x3F807FFF, 0x00000001, 0x00008000,
         0x80000000, 0x00000000, 0x807FFFFF]


@triton.jit
def _store_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    store_rounded(out_ptr + offs, tl.load(x_ptr + offs, mask=mask), mask)


def _bits_to_fp32(bits: list[int] | torch.Tensor) -> torch.Tensor:
    b = torch.as_tensor(bits, dtype=torch.int64)
    return ((b + 2**31) % 2**32 - 2**31).to(torch.int32).view(torch.float32)


def test_matches_round_to_nearest_even_and_keeps_nans(generator):
    random_bits = torch.randint(0, 2**32, (1 << 16,), generator=generator, dtype=torch.int64)
    x = torch.cat([_bits_to_fp32(EDGES), _bits_to_fp32(random_bits)])
    out = torch.empty(x.shape, dtype=torch.bfloat16)
    block = 1024
    _store_kernel[(triton.cdiv(x.numel(), block),)](x, out, x.numel(), BLOCK=block)
    nan = torch.isnan(x)
    assert bool(nan[:6].all()) and int(nan.sum()) > 6  # edge NaNs, plus random ones
    assert bool(torch.isnan(out[nan]).all()), [hex(int(b)) for b in x[nan & ~torch.isnan(out)].view(torch.int32)]
    want = x[~nan].to(torch.bfloat16)
    assert torch.equal(out[~nan].view(torch.int16), want.view(torch.int16))
