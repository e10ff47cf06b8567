"""The autograd Function behind the Triton and vocab-parallel paths of `token_logprobs`.

`impl` names the implementation of the `token_stats` / `token_grad` custom ops (custom_ops.py): "triton" on
CUDA or under TRITON_INTERPRET=1, "torch" for vocab-parallel CPU. With a TP group, each rank computes its
shard's (max, log-sum-exp, entropy, z_label), ONE all-gather merges them (vocab_parallel.all_gather_merge),
and the backward needs no collective at all:
every rank already holds the global (max, log-sum-exp) and entropy that its shard's gradient depends on.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..vocab_parallel import all_gather_merge, local_labels, vocab_shard_offset
from . import custom_ops


class ShardedTokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits_NV, labels_N, temperature: float, with_entropy: bool,
                tp_group: dist.ProcessGroup | None, impl: str):
        labels_local_N = labels_N
        if tp_group is not None:
            offset, _ = vocab_shard_offset(logits_NV.shape[1], tp_group)
            labels_local_N = local_labels(labels_N, offset, logits_NV.shape[1])
        m_N, ls_N, ent_N, zt_N = custom_ops.token_stats(logits_NV, labels_local_N, temperature, with_entropy,
                                                         impl)
        if tp_group is not None:
            m_N, ls_N, ent_N, zt_N = all_gather_merge(m_N, ls_N, ent_N, zt_N, tp_group)
        logp_N = (zt_N - m_N) - ls_N  # never zt - (m + ls): m + ls would round away small ls at |m| ~ 1e4
        ctx.save_for_backward(logits_NV, labels_local_N, m_N, ls_N, ent_N)
        ctx.temperature, ctx.impl = temperature, impl
        if ent_N is None:
            return logp_N
        return logp_N, ent_N

    @staticmethod
    def backward(ctx, grad_logp_N, grad_ent_N=None):
        logits_NV, labels_local_N, m_N, ls_N, ent_N = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        if grad_logp_N is None:
            grad_logp_N = torch.zeros_like(m_N)
        grad_logits_NV = custom_ops.token_grad(
            grad_logp_N.float().contiguous(), None if grad_ent_N is None else grad_ent_N.float().contiguous(),
            logits_NV, labels_local_N, m_N, ls_N, ent_N, ctx.temperature, ctx.impl)
        return grad_logits_NV, None, None, None, None, None
