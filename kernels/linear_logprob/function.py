"""The autograd Function of `linear_token_logprobs`, shared by the Triton and the chunked CPU paths.

Forward saves only (hidden, weight, labels, max, log-sum-exp, entropy): O(N) extra. Backward recomputes
logits blocks.
With a TP group, `weight` is this rank's vocab shard: the forward merges the shards' packed stats with ONE
all-gather; the backward produces this shard's dweight and a rank-partial dhidden, which is all-reduced
here (inside the op, unlike verl) so callers get the full dhidden.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..vocab_parallel import all_gather_merge, local_labels, vocab_shard_offset
from . import custom_ops


class LinearTokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden_NH, weight_VH, labels_N, temperature: float, with_entropy: bool,
                tp_group: dist.ProcessGroup | None, impl: str):
        labels_local_N = labels_N
        if tp_group is not None:
            offset, _ = vocab_shard_offset(weight_VH.shape[0], tp_group)
            labels_local_N = local_labels(labels_N, offset, weight_VH.shape[0])
        m_N, ls_N, ent_N, zt_N = custom_ops.linear_stats(hidden_NH, weight_VH, labels_local_N, temperature,
                                                         with_entropy, impl)
        if tp_group is not None:
            m_N, ls_N, ent_N, zt_N = all_gather_merge(m_N, ls_N, ent_N, zt_N, tp_group)
        ctx.save_for_backward(hidden_NH, weight_VH, labels_local_N, m_N, ls_N, ent_N)
        ctx.temperature, ctx.impl, ctx.tp_group = temperature, impl, tp_group
        logp_N = (zt_N - m_N) - ls_N
        return logp_N if ent_N is None else (logp_N, ent_N)

    @staticmethod
    def backward(ctx, grad_logp_N, grad_ent_N=None):
        hidden_NH, weight_VH, labels_local_N, m_N, ls_N, ent_N = ctx.saved_tensors
        need_dh, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_dh or need_dw):
            return None, None, None, None, None, None, None
        if grad_logp_N is None:
            grad_logp_N = torch.zeros_like(m_N)
        dh_NH, dw_VH = custom_ops.linear_grad(
            grad_logp_N.float().contiguous(), None if grad_ent_N is None else grad_ent_N.float().contiguous(),
            hidden_NH, weight_VH, labels_local_N, m_N, ls_N, ent_N, ctx.temperature, need_dh, need_dw, ctx.impl)
        if need_dh:
            if ctx.tp_group is not None:
                dist.all_reduce(dh_NH, group=ctx.tp_group)  # each rank saw only its vocab shard
            dh_NH = dh_NH.to(hidden_NH.dtype)
        return dh_NH, dw_VH, None, None, None, None, None
