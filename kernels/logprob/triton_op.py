"""Launchers for the token log-prob Triton kernels (CUDA, or CPU tensors under TRITON_INTERPRET=1).

Both functions share the signature of their PyTorch twins in torch_op.py, so `function.py` can drive either.
"""

from __future__ import annotations

import torch
import triton

from .kernel import token_logprobs_bwd_kernel, token_stats_fwd_kernel

# 4096 fp32 columns per tile over 8 warps = 16 elements per thread: 128-bit loads for fp32 and bf16
# without spilling (see kernels/static_check.py). Small V uses one tile of next_pow2(V).
MAX_BLOCK_V = 4096
NUM_WARPS = 8


def _block_v(vocab: int) -> int:
    return max(16, min(MAX_BLOCK_V, triton.next_power_of_2(max(vocab, 1))))


def token_stats(logits_NV: torch.Tensor, labels_N: torch.Tensor, temperature: float, with_entropy: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(max, log sum exp(z - max), entropy | None, z[label] or 0 where label == -1), fp32 [N] each."""
    n_rows, vocab = logits_NV.shape
    m_N = torch.empty(n_rows, dtype=torch.float32, device=logits_NV.device)
    ls_N = torch.empty_like(m_N)
    zt_N = torch.empty_like(m_N)
    ent_N = torch.empty_like(m_N) if with_entropy else m_N  # an unused pointer when not WITH_ENTROPY
    if n_rows:
        token_stats_fwd_kernel[(n_rows,)](
            logits_NV, labels_N, m_N, ls_N, ent_N, zt_N, vocab, logits_NV.stride(0), 1.0 / temperature,
            BLOCK_V=_block_v(vocab), WITH_ENTROPY=with_entropy, num_warps=NUM_WARPS)
    return m_N, ls_N, (ent_N if with_entropy else None), zt_N


def token_grad(grad_logp_N: torch.Tensor, grad_ent_N: torch.Tensor | None, logits_NV: torch.Tensor,
               labels_N: torch.Tensor, m_N: torch.Tensor, ls_N: torch.Tensor, ent_N: torch.Tensor | None,
               temperature: float) -> torch.Tensor:
    """dlogits in the logits' dtype, from the saved (m, ls) (and entropy); labels of -1 have no one-hot."""
    n_rows, vocab = logits_NV.shape
    grad_NV = torch.empty_like(logits_NV)
    with_entropy = grad_ent_N is not None
    if n_rows and vocab:
        block_v = _block_v(vocab)
        grid = (n_rows, triton.cdiv(vocab, block_v))
        token_logprobs_bwd_kernel[grid](
            logits_NV, labels_N, m_N, ls_N, ent_N if with_entropy else m_N, grad_logp_N,
            grad_ent_N if with_entropy else grad_logp_N, grad_NV, vocab, logits_NV.stride(0),
            grad_NV.stride(0),
            1.0 / temperature, BLOCK_V=block_v, WITH_ENTROPY=with_entropy, num_warps=NUM_WARPS)
    return grad_NV
