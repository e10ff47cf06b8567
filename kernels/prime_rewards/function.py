"""`linear_prime_rewards`: `prime_token_rewards` on the training path, differentiable w.r.t. the PRM's hidden
states and head weight.

Forward: the one fused launch of prime_token_rewards (PRM and reference log-probs from hidden states and head
weights, the token rewards, with cu_seqlens the per-sequence sums), which also hands back the PRM's softmax
pieces (max, log-sum-exp below it). Backward: the chain rule down to d loss / d prm_logp, then the
recompute-in-backward of linear_token_logprobs (custom_ops.linear_grad) with those pieces, so the backward
streams the vocabulary exactly as linear_token_logprobs' does and no second forward is needed.

The reference is a constant (prime_spec 4.1: gradients flow only through log pi_phi): its inputs get no
gradient, like prm_ce_loss's ref_logp.

No vocabulary split over tensor parallelism yet: the kernel merges each row's (max, lse) over the whole
vocabulary in one program instead of returning per-shard pieces that one all-gather could merge
(vocab_parallel.all_gather_merge), so a vocab-parallel head keeps linear_token_logprobs.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .._backend import Backend
from ..linear_logprob import custom_ops as linear_ops
from .op import prime_pieces, prime_token_rewards_backend, sequence_ids
from .types import ModelInput, PrimeLogprobs, check_prime_inputs


def prm_logp_grad(g_logp_N: torch.Tensor | None, g_reward_N: torch.Tensor | None, g_seq_sum_S: torch.Tensor | None,
                  valid_N: torch.Tensor | None, seq_N: torch.Tensor | None, beta: float,
                  like_N: torch.Tensor) -> torch.Tensor:
    """d loss / d prm_logp, fp32 [N], from the gradients of the op's outputs (None: no gradient).

    reward_t = beta * (prm_logp_t - ref_logp_t) on valid tokens and 0 elsewhere, and seq_reward_sum_s sums the
    rewards of sequence s, so g_t = g_logp_t + beta * (g_reward_t + g_seq_sum[seq(t)]) on valid tokens and
    g_logp_t elsewhere. torch.where, not a product with the mask: a masked token's NaN stays out."""
    g_r = torch.zeros_like(like_N) if g_reward_N is None else g_reward_N.float()
    if g_seq_sum_S is not None and seq_N is not None:
        g_r = g_r + g_seq_sum_S.float().index_select(0, seq_N)
    g_N = beta * g_r
    if valid_N is not None:
        g_N = torch.where(valid_N, g_N, 0.0)
    if g_logp_N is not None:
        g_N = g_N + g_logp_N.float()
    return g_N.contiguous()


class LinearPrimeRewards(torch.autograd.Function):
    @staticmethod
    def forward(ctx, prm_hidden_NH, prm_weight_VH, ref_a, ref_w, labels_N, mask_N, cu_seqlens, beta: float,
                impl: str):
        ref = ref_a if ref_w is None else (ref_a, ref_w)
        logp_5N, reward_N, seq_sum_S, seq_cnt_S = prime_pieces(
            labels_N, (prm_hidden_NH, prm_weight_VH), ref, None, beta, mask_N, cu_seqlens)
        _, prm_logp_N, ref_logp_N, m_N, ls_N = logp_5N.unbind()
        valid_N = None if mask_N is None else mask_N != 0
        seq_N = None if cu_seqlens is None else sequence_ids(cu_seqlens, labels_N.shape[0])
        ctx.save_for_backward(prm_hidden_NH, prm_weight_VH, labels_N, m_N, ls_N, valid_N, seq_N)
        ctx.beta, ctx.impl = beta, impl
        ctx.mark_non_differentiable(ref_logp_N, seq_cnt_S)
        return prm_logp_N, ref_logp_N, reward_N, seq_sum_S, seq_cnt_S

    @staticmethod
    @once_differentiable  # the backward is the fused-head kernels, not torch ops: no double backward
    def backward(ctx, g_logp_N, _g_ref_N, g_reward_N, g_seq_sum_S, _g_cnt_S):
        hidden_NH, weight_VH, labels_N, m_N, ls_N, valid_N, seq_N = ctx.saved_tensors
        need_dh, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_dh or need_dw):
            return (None,) * 9
        g_N = prm_logp_grad(g_logp_N, g_reward_N, g_seq_sum_S, valid_N, seq_N, ctx.beta, m_N)
        dh_NH, dw_VH = linear_ops.linear_grad(g_N, None, hidden_NH, weight_VH, labels_N, m_N, ls_N, None, 1.0,
                                              need_dh, need_dw, ctx.impl)
        return (dh_NH.to(hidden_NH.dtype) if need_dh else None, dw_VH, *(None,) * 7)


def linear_prime_rewards(labels: torch.Tensor, *, prm: tuple[torch.Tensor, torch.Tensor], ref: ModelInput,
                         beta: float, mask: torch.Tensor | None = None,
                         cu_seqlens: torch.Tensor | None = None) -> PrimeLogprobs:
    """prime_token_rewards (same launch, same outputs, bitwise) with gradients w.r.t. the PRM's hidden [N, H]
    and head weight [V, H] through prm_logp, reward and seq_reward_sum; ref (logits [N, V] or (hidden,
    weight)) and the counts get none. policy_logp is None: the policy trains through linear_token_logprobs.

    Backward: one recompute pass over the vocabulary (linear_token_logprobs' kernels) with the forward's saved
    PRM (max, log-sum-exp); O(N) saved besides the inputs. Temperature 1 (prime_spec 3.2: raw logits).
    TP = 1 only (module docstring)."""
    if not (isinstance(prm, (tuple, list)) and len(prm) == 2):
        raise ValueError("prm must be a (hidden [N, H], weight [V, H]) pair: its gradient is taken w.r.t. both")
    check_prime_inputs(labels, prm, ref, None, beta, mask, cu_seqlens)
    labels_N = labels.contiguous()
    impl = "triton" if prime_token_rewards_backend(labels_N) is Backend.TRITON else "cpu"
    ref_a, ref_w = (ref, None) if isinstance(ref, torch.Tensor) else ref
    hidden_NH, weight_VH = (t if t.stride(-1) == 1 else t.contiguous() for t in prm)
    prm_logp, ref_logp, reward, seq_sum, seq_cnt = LinearPrimeRewards.apply(
        hidden_NH, weight_VH, ref_a.detach(), None if ref_w is None else ref_w.detach(), labels_N, mask,
        cu_seqlens, float(beta), impl)
    has_seqs = cu_seqlens is not None
    return PrimeLogprobs(None, prm_logp, ref_logp, reward, seq_sum if has_seqs else None,
                         seq_cnt if has_seqs else None)
