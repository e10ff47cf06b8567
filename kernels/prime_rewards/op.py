"""Public `prime_token_rewards`: ONE Triton launch for all models on CUDA / under TRITON_INTERPRET=1,
the chunked PyTorch path (bounded memory, same fp32 pieces) on CPU. Scoring only: outputs carry no grad
(train through `linear_token_logprobs` / `token_logprobs`)."""

from __future__ import annotations

import torch
import triton

from .._backend import Backend, triton_or_torch
from ..linear_logprob import cpu as linear_cpu
from ..linear_logprob.triton_op import _dot_fp32, tile_config
from ..logprob import torch_op as logits_cpu
from .kernel import prime_rewards_kernel
from .types import ModelInput, PrimeLogprobs, check_prime_inputs


def prime_token_rewards_backend(labels: torch.Tensor) -> Backend:
    """TRITON on CUDA / under TRITON_INTERPRET=1, else TORCH (the chunked PyTorch path)."""
    return triton_or_torch(labels)


def _row_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _slot_args(model: ModelInput | None, like: torch.Tensor) -> tuple[list, int, bool]:
    """(pointer/size/stride args, KIND, DOT_FP32) of one model slot in prime_rewards_kernel."""
    if model is None:
        return [like, like, 0, 0, 0, 0], 0, True
    if isinstance(model, torch.Tensor):
        logits = _row_contiguous(model)
        return [logits, logits, logits.shape[1], 0, logits.stride(0), 0], 1, True
    hidden, weight = _row_contiguous(model[0]), _row_contiguous(model[1])
    args = [hidden, weight, weight.shape[0], hidden.shape[1], hidden.stride(0), weight.stride(0)]
    return args, 2, _dot_fp32(hidden.dtype)


def _triton(labels, prm, ref, policy, beta, mask) -> PrimeLogprobs:
    n_rows = labels.shape[0]
    logp_3N = torch.zeros((3, n_rows), dtype=torch.float32, device=labels.device)
    reward_N = torch.empty(n_rows, dtype=torch.float32, device=labels.device)
    mask_N = (mask != 0).to(torch.int8) if mask is not None else labels
    cfg = tile_config(labels.device)
    pol, pol_kind, pol_f32 = _slot_args(policy, labels)
    prm_a, prm_kind, prm_f32 = _slot_args(prm, labels)
    ref_a, ref_kind, ref_f32 = _slot_args(ref, labels)
    if n_rows:
        prime_rewards_kernel[(triton.cdiv(n_rows, cfg["BLOCK_N"]),)](
            labels, mask_N, logp_3N, reward_N, *pol, *prm_a, *ref_a, n_rows, float(beta),
            POL_KIND=pol_kind, PRM_KIND=prm_kind, REF_KIND=ref_kind, HAS_MASK=mask is not None,
            BLOCK_N=cfg["BLOCK_N"], BLOCK_V=cfg["BLOCK_V"], BLOCK_H=cfg["BLOCK_H"],
            POL_DOT_FP32=pol_f32, PRM_DOT_FP32=prm_f32, REF_DOT_FP32=ref_f32, num_warps=cfg["num_warps"])
    return PrimeLogprobs(logp_3N[0] if policy is not None else None, logp_3N[1], logp_3N[2], reward_N)


def _cpu_pieces(model: ModelInput, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z_label, max, log sum exp(z - max)) fp32 [N] in bounded memory."""
    if isinstance(model, torch.Tensor):
        m_N, ls_N, _, zt_N = logits_cpu.token_stats(model, labels, 1.0, False)
    else:
        m_N, ls_N, _, zt_N = linear_cpu.linear_stats(model[0], model[1], labels, 1.0, False)
    return zt_N, m_N, ls_N


def _cpu(labels, prm, ref, policy, beta, mask) -> PrimeLogprobs:
    zt_prm, m_prm, ls_prm = _cpu_pieces(prm, labels)
    zt_ref, m_ref, ls_ref = _cpu_pieces(ref, labels)
    reward_N = beta * (((zt_prm - m_prm) - (zt_ref - m_ref)) - (ls_prm - ls_ref))  # grouping: see kernel.py
    if mask is not None:
        reward_N = torch.where(mask != 0, reward_N, torch.zeros_like(reward_N))
    policy_logp = None
    if policy is not None:
        zt_pol, m_pol, ls_pol = _cpu_pieces(policy, labels)
        policy_logp = (zt_pol - m_pol) - ls_pol
    return PrimeLogprobs(policy_logp, (zt_prm - m_prm) - ls_prm, (zt_ref - m_ref) - ls_ref, reward_N)


@torch.no_grad()
def prime_token_rewards(labels: torch.Tensor, *, prm: ModelInput, ref: ModelInput,
                        policy: ModelInput | None = None, beta: float,
                        mask: torch.Tensor | None = None) -> PrimeLogprobs:
    """Per-token log-probs of policy (optional), PRM and reference (each logits [N, V] or (hidden, weight))
    and reward = beta*((z_prm - z_ref) - (lse_prm - lse_ref)) formed from fp32 pieces, 0 where mask is 0.
    All outputs fp32 [N]. A NaN input propagates to the affected outputs (masked rewards are 0)."""
    check_prime_inputs(labels, prm, ref, policy, beta, mask)
    labels_N = labels.contiguous()
    if prime_token_rewards_backend(labels_N) is Backend.TRITON:
        return _triton(labels_N, prm, ref, policy, beta, mask)
    return _cpu(labels_N, prm, ref, policy, beta, mask)
