"""Small @triton.jit helpers shared by the kernels."""

import triton
import triton.language as tl


@triton.jit
def store_rounded(ptr, value, mask):
    """Store fp32 `value` into ptr's element type with round-to-nearest-even.

    bf16 is rounded by hand (add 0x7FFF + the lowest kept bit, keep the top 16 bits): the Triton 3.9
    interpreter's fp32->bf16 cast truncates, and its "rtne" mode carries into the exponent wrongly, which
    made interpreted gradients land on the wrong bf16 neighbour. For every non-NaN input this equals
    cvt.rn.bf16.f32 (finite values overflow to inf as they should). NaNs are stored as a quiet NaN of the
    same sign, never rounded: the carry would turn CUDA's canonical NaN 0x7FFFFFFF into -0.0 (it wraps into
    the sign bit) and a NaN with a small payload into inf (tests/kernels/test_store_rounded.py).
    """
    out_ty: tl.constexpr = ptr.dtype.element_ty
    if out_ty == tl.bfloat16:
        bits = value.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        quiet_nan = (bits >> 16) | 0x7FC0  # sign kept, exponent all ones, quiet bit set
        out = tl.where(value != value, quiet_nan, rounded)
        tl.store(ptr, out.to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=mask)
    else:
        tl.store(ptr, value.to(out_ty), mask=mask)
