"""Gradient reduction across data-parallel ranks and global-norm clipping across tensor- and
pipeline-parallel shards.

Losses are scaled with global counts (sum over micro-batches and DP ranks = the batch loss), so the DP
reduction is a SUM, not a mean. The grad norm is the norm of the *full* (unsharded) gradient: squares of
TP-sharded parameters are summed over the TP group, replicated parameters (norms, biases of row-parallel
layers) are counted once, and with PP > 1 each stage's total is summed over the pipeline group. Tied
input/output embeddings with PP > 1 live on the first and the last stage (Megatron marks the last stage's
copy `shared`): their gradients are summed over the embedding group (as Megatron's finalize_model_grads
does) so both copies take the same step, and the copy is left out of the norm.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from . import parallel


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def zero_grads(params: list[torch.nn.Parameter]) -> None:
    for p in params:
        p.grad = None


def reduce_across_dp(params: list[torch.nn.Parameter]) -> None:
    """Sum gradients over the DP group (one flat all-reduce; a rank without micro-batches contributes 0)."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if parallel.layout().dp == 1:
        return
    flat = torch.cat([p.grad.reshape(-1).float() for p in params])
    dist.all_reduce(flat, group=parallel.dp_group())
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def sync_tied_embedding_grads(params: list[torch.nn.Parameter]) -> None:
    """PP > 1 with tied embeddings: sum the first stage's embedding gradient and the last stage's copy's
    (Megatron sets `shared_embedding` on both). Collective over the embedding group (first + last stage)."""
    if parallel.layout().pp == 1:
        return
    for p in params:
        if getattr(p, "shared_embedding", False) and p.grad is not None:
            dist.all_reduce(p.grad, group=parallel.embedding_group())


def global_grad_norm(params: list[torch.nn.Parameter]) -> float:
    # accumulators on the parameters' device: NCCL reduces only device tensors
    device = params[0].device if params else torch.device("cpu")
    sharded = torch.zeros((), dtype=torch.float64, device=device)
    replicated = torch.zeros((), dtype=torch.float64, device=device)
    for p in params:
        if p.grad is None or getattr(p, "shared", False):  # `shared`: a PP stage's copy of a tied weight
            continue
        sq = p.grad.detach().double().pow(2).sum()
        if getattr(p, "tensor_model_parallel", False):
            sharded += sq
        else:
            replicated += sq
    if parallel.layout().tp > 1:
        dist.all_reduce(sharded, group=parallel.tp_group())
    total = sharded + replicated
    if parallel.layout().pp > 1:
        dist.all_reduce(total, group=parallel.pp_group())
    return float(total.sqrt())


def clip_grads(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """Scale gradients so the global norm is at most `max_norm` (<= 0: no clipping); return the norm
    before clipping (NaN/inf norms are returned as they are and the gradients are left untouched, so the
    optimizer step propagates the problem visibly instead of hiding it)."""
    norm = global_grad_norm(params)
    if max_norm > 0 and norm > max_norm and torch.isfinite(torch.tensor(norm)):
        scale = max_norm / (norm + 1e-6)
        for p in params:
            if p.grad is not None:
                p.grad.mul_(scale)
    return norm
