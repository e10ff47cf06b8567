"""`linear_prime_rewards`: `prime_token_rewards` on the training path, differentiable w.r.t. the PRM's hidden
states and head weight.

Forward: prime_token_rewards' own forward (PRM and reference log-probs from hidden states and head weights, the
token rewards, with cu_seqlens the per-sequence sums; one fused launch, or the vocab-split path for wide
vocabularies), which also hands back the PRM's softmax pieces (max, log-sum-exp below it). Backward: the
chain rule down to d loss / d prm_logp, then the
recompute-in-backward of linear_token_logprobs (custom_ops.linear_grad) with those pieces, so the backward
streams the vocabulary exactly as linear_token_logprobs' does and no second forward is needed.

The reference is a constant (prime_spec 4.1: gradients flow only through log pi_phi): its inputs get no
gradient, like prm_ce_loss's ref_logp.

Vocab-parallel (tp_group): the PRM weight and the reference (weight or logits) are this rank's contiguous vocab
shard, labels are global ids. The forward is sharded.py's: per-shard pieces of both models, ONE all-gather of
them packed together, the merge, then the log-probs, rewards and per-sequence sums formed in torch from the
merged fp32 pieces (not in the TP = 1 Triton kernel, which streams a row's whole vocabulary in one program).
The backward is linear_token_logprobs' vocab-parallel one: this shard's recompute with the merged (max, lse)
gives this shard's d weight and a rank-partial d hidden, all-reduced over tp_group inside the op (its one
collective), so callers get the full d hidden, as from linear_token_logprobs (models/gpt.py relies on that:
no copy_to_tensor_model_parallel_region before the fused head, and a sequence-parallel gather whose backward
keeps this rank's slice).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from .._backend import Backend
from ..linear_logprob import custom_ops as linear_ops
from ..vocab_parallel import local_labels, vocab_shard_offset
from . import sharded
from .op import prime_pieces, prime_token_rewards_backend, row_contiguous
from .segments import sequence_ids
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


def _sharded_outputs(prm: tuple[torch.Tensor, torch.Tensor], ref: ModelInput, labels_N: torch.Tensor,
                     mask_N: torch.Tensor | None, cu_seqlens: torch.Tensor | None, beta: float, impl: str,
                     tp_group: dist.ProcessGroup):
    """The TP forward (sharded.py): (labels local to this shard, PRM (m, ls), and the five outputs)."""
    offset, _ = vocab_shard_offset(prm[1].shape[0], tp_group)
    labels_local_N = local_labels(labels_N, offset, prm[1].shape[0])
    prm_p, ref_p = sharded.merged_pieces(prm, ref, labels_local_N, impl == "triton", tp_group)
    reward_N = sharded.rewards(prm_p, ref_p, beta, mask_N)
    if cu_seqlens is None:
        seq_sum_S, seq_cnt_S = reward_N.new_empty(0), reward_N.new_empty(0, dtype=torch.int64)
    else:
        seq_N = sequence_ids(cu_seqlens, labels_N.shape[0])
        seq_sum_S, seq_cnt_S = sharded.sequence_sums(reward_N, mask_N, seq_N, cu_seqlens)
    outputs = (prm_p.logp(), ref_p.logp(), reward_N, seq_sum_S, seq_cnt_S)
    return labels_local_N, prm_p.m_N, prm_p.ls_N, outputs


class LinearPrimeRewards(torch.autograd.Function):
    @staticmethod
    def forward(ctx, prm_hidden_NH, prm_weight_VH, ref_a, ref_w, labels_N, mask_N, cu_seqlens, beta: float,
                impl: str, tp_group: dist.ProcessGroup | None):
        ref = ref_a if ref_w is None else (ref_a, ref_w)
        if tp_group is None:
            logp_5N, reward_N, seq_sum_S, seq_cnt_S = prime_pieces(
                labels_N, (prm_hidden_NH, prm_weight_VH), ref, None, beta, mask_N, cu_seqlens)
            _, prm_logp_N, ref_logp_N, m_N, ls_N = logp_5N.unbind()
            labels_grad_N = labels_N
        else:
            labels_grad_N, m_N, ls_N, outputs = _sharded_outputs(
                (prm_hidden_NH, prm_weight_VH), ref, labels_N, mask_N, cu_seqlens, beta, impl, tp_group)
            prm_logp_N, ref_logp_N, reward_N, seq_sum_S, seq_cnt_S = outputs
        valid_N = None if mask_N is None else mask_N != 0
        seq_N = None if cu_seqlens is None else sequence_ids(cu_seqlens, labels_N.shape[0])
        ctx.save_for_backward(prm_hidden_NH, prm_weight_VH, labels_grad_N, m_N, ls_N, valid_N, seq_N)
        ctx.beta, ctx.impl, ctx.tp_group = beta, impl, tp_group
        ctx.mark_non_differentiable(ref_logp_N, seq_cnt_S)
        return prm_logp_N, ref_logp_N, reward_N, seq_sum_S, seq_cnt_S

    @staticmethod
    @once_differentiable  # the backward is the fused-head kernels, not torch ops: no double backward
    def backward(ctx, g_logp_N, _g_ref_N, g_reward_N, g_seq_sum_S, _g_cnt_S):
        hidden_NH, weight_VH, labels_N, m_N, ls_N, valid_N, seq_N = ctx.saved_tensors
        need_dh, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_dh or need_dw):
            return (None,) * 10
        g_N = prm_logp_grad(g_logp_N, g_reward_N, g_seq_sum_S, valid_N, seq_N, ctx.beta, m_N)
        # labels_N is shard-local under TP (-1 off this shard: no one-hot term here)
        dh_NH, dw_VH = linear_ops.linear_grad(g_N, None, hidden_NH, weight_VH, labels_N, m_N, ls_N, None, 1.0,
                                              need_dh, need_dw, ctx.impl)
        if need_dh:
            if ctx.tp_group is not None:
                dist.all_reduce(dh_NH, group=ctx.tp_group)  # each rank saw only its vocab shard
            dh_NH = dh_NH.to(hidden_NH.dtype)
        return (dh_NH, dw_VH, *(None,) * 8)


def linear_prime_rewards(labels: torch.Tensor, *, prm: tuple[torch.Tensor, torch.Tensor], ref: ModelInput,
                         beta: float, mask: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None,
                         tp_group: dist.ProcessGroup | None = None) -> PrimeLogprobs:
    """prime_token_rewards (same forward, same outputs, bitwise) with gradients w.r.t. the PRM's hidden [N, H]
    and head weight [V, H] through prm_logp, reward and seq_reward_sum; ref (logits [N, V] or (hidden,
    weight)) and the counts get none. policy_logp is None: the policy trains through linear_token_logprobs.

    Backward: one recompute pass over the vocabulary (linear_token_logprobs' kernels) with the forward's saved
    PRM (max, log-sum-exp); O(N) saved besides the inputs. Temperature 1 (prime_spec 3.2: raw logits).

    tp_group (vocab-parallel, module docstring): the PRM weight [V/tp, H] and the reference's weight or logits
    [N, V/tp] are this rank's contiguous shard (Megatron's layout, vocab_parallel.vocab_shard_offset), labels
    global ids in [0, V). ONE all-gather in the forward, one all-reduce of d hidden in the backward; every
    rank gets bitwise-identical outputs, equal to the unsharded call within fp32 rounding (the rewards are
    formed in torch from the merged pieces, not in the TP = 1 kernel). None: the TP = 1 path, unchanged."""
    if not (isinstance(prm, (tuple, list)) and len(prm) == 2):
        raise ValueError("prm must be a (hidden [N, H], weight [V, H]) pair: its gradient is taken w.r.t. both")
    tp_world = 1 if tp_group is None else dist.get_world_size(tp_group)
    check_prime_inputs(labels, prm, ref, None, beta, mask, cu_seqlens, vocab_shards=tp_world)
    labels_N = labels.contiguous()
    impl = "triton" if prime_token_rewards_backend(labels_N) is Backend.TRITON else "cpu"
    ref_a, ref_w = (ref, None) if isinstance(ref, torch.Tensor) else ref
    ref_a, ref_w = row_contiguous(ref_a), None if ref_w is None else row_contiguous(ref_w)
    hidden_NH, weight_VH = (row_contiguous(t) for t in prm)
    prm_logp, ref_logp, reward, seq_sum, seq_cnt = LinearPrimeRewards.apply(
        hidden_NH, weight_VH, ref_a.detach(), None if ref_w is None else ref_w.detach(), labels_N, mask,
        cu_seqlens, float(beta), impl, tp_group)
    has_seqs = cu_seqlens is not None
    return PrimeLogprobs(None, prm_logp, ref_logp, reward, seq_sum if has_seqs else None,
                         seq_cnt if has_seqs else None)
