"""Public `linear_token_logprobs`: fused lm_head + log-prob that never materialises [N, V].

Dispatch: CUDA (or TRITON_INTERPRET=1) -> Triton kernels (triton_op.py); CPU -> the chunked PyTorch
implementation (cpu.py), bounded memory, same numerics. Both go through LinearTokenLogprobs (function.py).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .._backend import Backend, triton_or_torch
from .function import LinearTokenLogprobs
from .validate import check_linear_inputs


def linear_token_logprobs_backend(hidden: torch.Tensor) -> Backend:
    """TRITON on CUDA / under TRITON_INTERPRET=1, else TORCH (the chunked PyTorch path, cpu.py)."""
    return triton_or_torch(hidden)


def linear_token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    tp_group: dist.ProcessGroup | None = None,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log softmax(hidden @ weight.T / T)[label] per row as fp32 [N]; with return_entropy, (logp, entropy).

    hidden [N, H], weight [V, H] (with tp_group: this rank's contiguous vocab shard), labels int64 [N] global
    ids. Differentiable w.r.t. hidden and weight; dhidden is all-reduced over tp_group inside the op.
    Logits are fp32 accumulations of the input dtype; results are deterministic run to run.
    """
    check_linear_inputs(hidden, weight, labels, temperature, tp_group)
    impl = "triton" if linear_token_logprobs_backend(hidden) is Backend.TRITON else "cpu"
    hidden_NH = hidden if hidden.stride(-1) == 1 else hidden.contiguous()
    weight_VH = weight if weight.stride(-1) == 1 else weight.contiguous()
    return LinearTokenLogprobs.apply(hidden_NH, weight_VH, labels.contiguous(), float(temperature),
                                     return_entropy, tp_group, impl)
