"""Public `token_logprobs`: dispatch to the C++ CPU op (or Triton / reference) with autograd.

Legend: N rows (tokens), V vocabulary. Outputs are fp32 whatever the logits dtype.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .._backend import Backend, select_backend, triton_or_torch
from .._validate import check_float_matrix, check_labels, check_temperature
from . import ref
from .function import ShardedTokenLogprobs

HAS_TRITON_KERNEL = True  # kernel.py / triton_op.py


def token_logprobs_backend(logits: torch.Tensor, *, tp_group: dist.ProcessGroup | None = None) -> Backend:
    """The implementation `token_logprobs` would run for these logits (tests and benchmarks report it)."""
    if tp_group is not None:
        # Vocab-parallel: Triton where Triton runs, else the chunked PyTorch twin (torch_op.py); both share
        # one all-gather of packed stats (vocab_parallel.py).
        return triton_or_torch(logits)
    # float64 logits go to the reference (fp32 math, like every path): the C++ op reads fp32/bf16/fp16.
    has_cpp = logits.dtype in (torch.float32, torch.bfloat16, torch.float16)
    return select_backend(logits, has_triton=HAS_TRITON_KERNEL, has_cpp=has_cpp)


class _CppTokenLogprobs(torch.autograd.Function):
    """Forward: one streaming pass per row (online max / sum-exp). Backward: one pass per row.

    The row statistics are saved as the pair (max, log_sum) rather than lse = max + log_sum, so the backward
    forms log p_j = (z_j - max) - log_sum without cancellation (see kernels/csrc/token_logprobs_kernel.h).
    """

    @staticmethod
    def forward(ctx, logits_NV, labels_N, temperature: float, with_entropy: bool):
        logp_N, max_N, log_sum_N, entropy_N = torch.ops.primeflow.token_logprobs_fwd(
            logits_NV, labels_N, temperature, with_entropy)
        ctx.save_for_backward(logits_NV, labels_N, max_N, log_sum_N, entropy_N)
        ctx.temperature = temperature
        ctx.with_entropy = with_entropy
        return logp_N, entropy_N

    @staticmethod
    def backward(ctx, grad_logp_N, grad_entropy_N):
        logits_NV, labels_N, max_N, log_sum_N, entropy_N = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        if grad_logp_N is None:
            grad_logp_N = torch.zeros_like(max_N)
        if ctx.with_entropy and grad_entropy_N is None:
            grad_entropy_N = torch.zeros_like(max_N)
        grad_logits_NV = torch.ops.primeflow.token_logprobs_bwd(
            grad_logp_N.contiguous(), grad_entropy_N.contiguous() if ctx.with_entropy else None,
            logits_NV, labels_N, max_N, log_sum_N, entropy_N if ctx.with_entropy else None, ctx.temperature)
        return grad_logits_NV, None, None, None


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
    if tp_group is not None or backend is Backend.TRITON:
        return _sharded_or_triton(logits, labels, temperature, tp_group, return_entropy, backend)
    if backend is Backend.REFERENCE:
        return ref.token_logprobs(logits, labels, temperature=temperature, tp_group=tp_group,
                                  return_entropy=return_entropy)
    check_float_matrix("logits", logits)
    check_temperature(temperature)
    check_labels("labels", labels, logits.shape[0], logits.shape[1], logits.device)
    if backend is Backend.CPP:
        logp_N, entropy_N = _CppTokenLogprobs.apply(
            logits.contiguous(), labels.contiguous(), float(temperature), return_entropy)
        return (logp_N, entropy_N) if return_entropy else logp_N
    raise AssertionError(f"unhandled backend {backend}")


def _sharded_or_triton(logits: torch.Tensor, labels: torch.Tensor, temperature: float,
                       tp_group: dist.ProcessGroup | None, return_entropy: bool, backend: Backend):
    """The Triton path (any device where Triton runs) and the vocab-parallel path (Triton or torch_op)."""
    check_float_matrix("logits", logits)
    check_temperature(temperature)
    vocab = logits.shape[1]
    if tp_group is not None:
        vocab = logits.shape[1] * dist.get_world_size(tp_group)  # labels are global ids
    check_labels("labels", labels, logits.shape[0], vocab, logits.device)
    impl = "triton" if backend is Backend.TRITON else "torch"
    logits_NV = logits if logits.stride(-1) == 1 else logits.contiguous()
    return ShardedTokenLogprobs.apply(logits_NV, labels.contiguous(), float(temperature), return_entropy,
                                      tp_group, impl)
