"""`torch.ops.primeflow.token_stats` / `token_grad`: the device work of `token_logprobs` as custom ops.

`impl` names the implementation: "triton" (triton_op.py: CUDA, or CPU under TRITON_INTERPRET=1) or "torch"
(torch_op.py, the chunked twin the vocab-parallel CPU path uses). The fake implementations state the
shapes only (kernels/_library.py says why). Also the fake implementations of the C++ CPU ops
(`token_logprobs_fwd` / `_bwd`, kernels/csrc/ops.cpp), which are defined in C++ without one.
"""

from __future__ import annotations

import torch

from .._ext import HAS_EXTENSION
from .._library import absent, present, qualified
from . import torch_op, triton_op

IMPLS = {"triton": triton_op, "torch": torch_op}


@torch.library.custom_op(qualified("token_stats"), mutates_args=())
def _token_stats(logits_NV: torch.Tensor, labels_N: torch.Tensor, temperature: float, with_entropy: bool,
                 impl: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    m_N, ls_N, ent_N, zt_N = IMPLS[impl].token_stats(logits_NV, labels_N, temperature, with_entropy)
    return m_N, ls_N, ent_N if with_entropy else absent(m_N), zt_N


@_token_stats.register_fake
def _(logits_NV, labels_N, temperature, with_entropy, impl):
    n_rows = logits_NV.shape[0]
    row = [logits_NV.new_empty(n_rows, dtype=torch.float32) for _ in range(3)]
    return row[0], row[1], logits_NV.new_empty(n_rows if with_entropy else 0, dtype=torch.float32), row[2]


def token_stats(logits_NV: torch.Tensor, labels_N: torch.Tensor, temperature: float, with_entropy: bool,
                impl: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(max, log sum exp(z - max), entropy | None, z[label] or 0 where label == -1), fp32 [N] each."""
    m_N, ls_N, ent_N, zt_N = _token_stats(logits_NV, labels_N, temperature, with_entropy, impl)
    return m_N, ls_N, present(ent_N, with_entropy), zt_N


@torch.library.custom_op(qualified("token_grad"), mutates_args=())
def token_grad(grad_logp_N: torch.Tensor, grad_ent_N: torch.Tensor | None, logits_NV: torch.Tensor,
               labels_N: torch.Tensor, m_N: torch.Tensor, ls_N: torch.Tensor, ent_N: torch.Tensor | None,
               temperature: float, impl: str) -> torch.Tensor:
    """dlogits in the logits' dtype from the saved row statistics (labels of -1 have no one-hot)."""
    return IMPLS[impl].token_grad(grad_logp_N, grad_ent_N, logits_NV, labels_N, m_N, ls_N, ent_N, temperature)


@token_grad.register_fake
def _(grad_logp_N, grad_ent_N, logits_NV, labels_N, m_N, ls_N, ent_N, temperature, impl):
    return torch.empty_like(logits_NV)


if HAS_EXTENSION:
    @torch.library.register_fake(qualified("token_logprobs_fwd"))
    def _(logits_NV, labels_N, temperature, with_entropy):
        n_rows = logits_NV.shape[0]
        row = [logits_NV.new_empty(n_rows, dtype=torch.float32) for _ in range(3)]
        return (*row, logits_NV.new_empty(n_rows if with_entropy else 0, dtype=torch.float32))

    @torch.library.register_fake(qualified("token_logprobs_bwd"))
    def _(grad_logp_N, grad_ent_N, logits_NV, labels_N, max_N, log_sum_N, ent_N, temperature):
        return torch.empty_like(logits_NV)
