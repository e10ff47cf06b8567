"""Which core attention runs: flash-attn only for CUDA bf16/fp16 without an explicit mask, SDPA otherwise
(flash-attn rejects fp32). Proven without a GPU on fake CUDA tensors (torch FakeTensorMode): the SDPA path
traces on fake CUDA tensors, and the flash path is recognisable because it imports flash_attn, which a
CPU-only machine does not have."""

from __future__ import annotations

import pytest
import torch
from primeflow.models.spec import FlashVarlenAttention, uses_flash
from torch._subclasses.fake_tensor import FakeTensorMode

CUDA = torch.device("cuda", 0)


@pytest.mark.parametrize(("dtype", "device", "masked", "want"), [
    (torch.bfloat16, "cuda", False, True), (torch.float16, "cuda", False, True),
    (torch.float32, "cuda", False, False), (torch.bfloat16, "cpu", False, False),
    (torch.bfloat16, "cuda", True, False)])
def test_uses_flash_only_for_cuda_half_precision_without_mask(dtype, device, masked, want):
    with FakeTensorMode(allow_non_fake_inputs=True):
        q = torch.empty(4, 2, 8, dtype=dtype, device=device)
        mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool, device=device) if masked else None
        assert uses_flash(q, mask) is want


def _attention() -> FlashVarlenAttention:
    attn = FlashVarlenAttention.__new__(FlashVarlenAttention)  # the dispatch only; no Megatron config
    torch.nn.Module.__init__(attn)
    attn.softmax_scale, attn.dropout_p = 0.125, 0.0
    return attn


def test_fp32_on_cuda_falls_back_to_sdpa_and_bf16_goes_to_flash():
    pytest.importorskip("megatron.core")
    try:
        import flash_attn  # noqa: F401
        pytest.skip("flash_attn is installed: the flash path would run for real")
    except ImportError:
        pass
    attn = _attention()
    with FakeTensorMode(allow_non_fake_inputs=True):
        s, b, n, d = 6, 1, 2, 8
        q32 = torch.empty(s, b, n, d, dtype=torch.float32, device=CUDA)
        out = attn(q32, q32, q32, None)  # SDPA on fake CUDA: no flash_attn import
        assert out.shape == (s, b, n * d) and out.device == CUDA and out.dtype == torch.float32
        q16 = q32.to(torch.bfloat16)
        with pytest.raises(ImportError, match="flash_attn"):
            attn(q16, q16, q16, None)
