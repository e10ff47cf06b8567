"""Gradient reduction across data-parallel ranks and global-norm clipping across tensor-parallel shards.

Losses are scaled with global counts (sum over micro-batches and DP ranks = the batch loss), so the DP
reduction is a SUM, not a mean. The grad norm is the norm of the *full* (unsharded) gradient: squares of
TP-sharded parameters are summed over the TP group, replicated parameters (norms, biases of row-parallel
layers) are counted once.
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


def global_grad_norm(params: list[torch.nn.Parameter]) -> float:
    sharded = torch.zeros((), dtype=torch.float64)
    replicated = torch.zeros((), dtype=torch.float64)
    for p in params:
        if p.grad is None:
            continue
        sq = p.grad.detach().double().pow(2).sum()
        if getattr(p, "tensor_model_parallel", False):
            sharded += sq
        else:
            replicated += sq
    if parallel.layout().tp > 1:
        dist.all_reduce(sharded, group=parallel.tp_group())
    return float((sharded + replicated).sqrt())


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
