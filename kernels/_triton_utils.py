"""Small @triton.jit helpers shared by the kernels."""

import triton
import triton.language as tl


@triton.jit
def store_rounded(ptr, value, mask):
    """Store fp32 `value` into ptr's element type with round-to-nearest-even.

    bf16 is rounded by hand (add 0x7FFF + the lowest kept bit, keep the top 16 bits): the Triton 3.9
    interpreter's fp32->bf16 cast truncates, and its "rtne" mode carries into the exponent wrongly, which
    made interpreted gradients land on the wrong bf16 neighbour. On GPUs this equals cvt.rn.bf16.f32
    (NaN and inf survive: the added carry never reaches the exponent of an all-ones exponent field).
    """
    out_ty: tl.constexpr = ptr.dtype.element_ty
    if out_ty == tl.bfloat16:
        bits = value.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        tl.store(ptr, (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=mask)
    else:
        tl.store(ptr, value.to(out_ty), mask=mask)
