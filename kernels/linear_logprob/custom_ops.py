"""`torch.ops.primeflow.linear_stats` / `linear_grad`: the device work of `linear_token_logprobs` as custom ops.

`impl` names the implementation: "triton" (triton_op.py: CUDA, or CPU under TRITON_INTERPRET=1) or "cpu"
(cpu.py, the chunked PyTorch path). The fake implementations state the shapes only (kernels/_library.py).
"""

from __future__ import annotations

import torch

from .._library import absent, present, qualified
from . import cpu, triton_op

IMPLS = {"triton": triton_op, "cpu": cpu}


@torch.library.custom_op(qualified("linear_stats"), mutates_args=())
def _linear_stats(hidden_NH: torch.Tensor, weight_VH: torch.Tensor, labels_N: torch.Tensor, temperature: float,
                  with_entropy: bool, impl: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    m_N, ls_N, ent_N, zt_N = IMPLS[impl].linear_stats(hidden_NH, weight_VH, labels_N, temperature, with_entropy)
    return m_N, ls_N, ent_N if with_entropy else absent(m_N), zt_N


@_linear_stats.register_fake
def _(hidden_NH, weight_VH, labels_N, temperature, with_entropy, impl):
    n_rows = hidden_NH.shape[0]
    row = [hidden_NH.new_empty(n_rows, dtype=torch.float32) for _ in range(3)]
    return row[0], row[1], hidden_NH.new_empty(n_rows if with_entropy else 0, dtype=torch.float32), row[2]


def linear_stats(hidden_NH: torch.Tensor, weight_VH: torch.Tensor, labels_N: torch.Tensor, temperature: float,
                 with_entropy: bool, impl: str
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(max, log sum exp(z - max), entropy | None, z_label or 0 where the label is -1), fp32 [N] each."""
    m_N, ls_N, ent_N, zt_N = _linear_stats(hidden_NH, weight_VH, labels_N, temperature, with_entropy, impl)
    return m_N, ls_N, present(ent_N, with_entropy), zt_N


@torch.library.custom_op(qualified("linear_grad"), mutates_args=())
def _linear_grad(grad_logp_N: torch.Tensor, grad_ent_N: torch.Tensor | None, hidden_NH: torch.Tensor,
                 weight_VH: torch.Tensor, labels_N: torch.Tensor, m_N: torch.Tensor, ls_N: torch.Tensor,
                 ent_N: torch.Tensor | None, temperature: float, need_dh: bool, need_dw: bool, impl: str
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    module = IMPLS[impl]
    rows, cols = module.grad_chunking(hidden_NH.shape[0], hidden_NH.device)
    dh_NH, dw_VH = cpu.linear_grad(
        module.dz_fn, rows, cols, grad_logp_N, grad_ent_N, hidden_NH, weight_VH, labels_N, m_N, ls_N, ent_N,
        temperature, need_dh, need_dw, dz_dtype=module.dz_dtype(hidden_NH.dtype, hidden_NH.device))
    return (dh_NH if need_dh else absent(hidden_NH)), (dw_VH if need_dw else absent(hidden_NH))


@_linear_grad.register_fake
def _(grad_logp_N, grad_ent_N, hidden_NH, weight_VH, labels_N, m_N, ls_N, ent_N, temperature, need_dh, need_dw,
      impl):
    dh_NH = hidden_NH.new_empty(hidden_NH.shape, dtype=torch.float32) if need_dh else absent(hidden_NH)
    return dh_NH, (torch.empty_like(weight_VH) if need_dw else absent(hidden_NH))


def linear_grad(grad_logp_N: torch.Tensor, grad_ent_N: torch.Tensor | None, hidden_NH: torch.Tensor,
                weight_VH: torch.Tensor, labels_N: torch.Tensor, m_N: torch.Tensor, ls_N: torch.Tensor,
                ent_N: torch.Tensor | None, temperature: float, need_dh: bool, need_dw: bool, impl: str
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(dhidden fp32 [N, H] | None, dweight in the weight's dtype [V, H] | None): cpu.linear_grad's
    recompute-in-backward driver with the implementation's dz."""
    dh_NH, dw_VH = _linear_grad(grad_logp_N, grad_ent_N, hidden_NH, weight_VH, labels_N, m_N, ls_N, ent_N,
                                temperature, need_dh, need_dw, impl)
    return present(dh_NH, need_dh), present(dw_VH, need_dw)
