"""Public `token_logprobs`: dispatch to the C++ CPU op (or Triton / reference) with autograd.

Legend: N rows (tokens), V vocabulary. Outputs are fp32 whatever the logits dtype.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .._backend import Backend, select_backend
from .._validate import check_float_matrix, check_labels, check_temperature
from . import ref

HAS_TRITON_KERNEL = False  # the Triton kernel lands with the kernel-library issue; until then CUDA runs `ref`


def token_logprobs_backend(logits: torch.Tensor, *, tp_group: dist.ProcessGroup | None = None) -> Backend:
    """The implementation `token_logprobs` would run for these logits (tests and benchmarks report it)."""
    if tp_group is not None:
        return Backend.REFERENCE
    return select_backend(logits, has_triton=HAS_TRITON_KERNEL, has_cpp=True)


class _CppTokenLogprobs(torch.autograd.Function):
    """Forward: one pass per row (online max / sum-exp). Backward: one pass per row from the saved lse."""

    @staticmethod
    def forward(ctx, logits_NV, labels_N, temperature: float, with_entropy: bool):
        logp_N, lse_N, entropy_N = torch.ops.primeflow.token_logprobs_fwd(
            logits_NV, labels_N, temperature, with_entropy)
        ctx.save_for_backward(logits_NV, labels_N, lse_N, entropy_N)
        ctx.temperature = temperature
        ctx.with_entropy = with_entropy
        ctx.mark_non_differentiable(lse_N)
        return logp_N, lse_N, entropy_N

    @staticmethod
    def backward(ctx, grad_logp_N, _grad_lse_N, grad_entropy_N):
        logits_NV, labels_N, lse_N, entropy_N = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        grad_logits_NV = torch.ops.primeflow.token_logprobs_bwd(
            _zeros_if_none(grad_logp_N, lse_N),
            _zeros_if_none(grad_entropy_N, lse_N) if ctx.with_entropy else None,
            logits_NV, labels_N, lse_N, entropy_N if ctx.with_entropy else None, ctx.temperature)
        return grad_logits_NV, None, None, None


def _zeros_if_none(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if grad is None else grad.contiguous()


def token_logprobs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    tp_group: dist.ProcessGroup | None = None,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log softmax(logits / temperature)[label] per row as fp32 [N]; with return_entropy, (logp, entropy).

    logits: [N, V] fp32/bf16/fp16 (with tp_group: this rank's vocab shard), labels: int64 [N] global ids.
    Differentiable w.r.t. logits. Padded vocabulary columns must be -inf.
    """
    backend = token_logprobs_backend(logits, tp_group=tp_group)
    if backend is Backend.REFERENCE:
        return ref.token_logprobs(logits, labels, temperature=temperature, tp_group=tp_group,
                                  return_entropy=return_entropy)
    check_float_matrix("logits", logits)
    check_temperature(temperature)
    check_labels("labels", labels, logits.shape[0], logits.shape[1], logits.device)
    if backend is Backend.CPP:
        logp_N, _lse_N, entropy_N = _CppTokenLogprobs.apply(
            logits.contiguous(), labels.contiguous(), float(temperature), return_entropy)
        return (logp_N, entropy_N) if return_entropy else logp_N
    raise AssertionError(f"unhandled backend {backend}")
