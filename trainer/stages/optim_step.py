"""One optimizer step over a mini-batch of rows: packed micro-batches, globally scaled losses, DP gradient
sum, TP-aware clipping. Shared by the PRM update, the policy update and SFT."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

from .. import parallel
from ..grads import clip_grads, reduce_across_dp, trainable, zero_grads

MicroLoss = Callable[[list[int]], torch.Tensor]


def accumulate_grads(model: torch.nn.Module, micro_batches: list[list[int]], micro_loss: MicroLoss) -> float:
    """Backward every micro-batch's loss share, then sum gradients over DP ranks. `micro_loss(rows)` must
    return the micro-batch's share of the mini-batch loss, scaled by global counts, so the shares of all
    micro-batches on all DP ranks sum to the mini-batch loss whatever the packing. Returns that loss."""
    params = trainable(model)
    zero_grads(params)
    model.train()
    local = torch.zeros((), dtype=torch.float64)
    for rows in micro_batches:
        loss = micro_loss(rows)
        loss.backward()
        local += loss.detach().double()
    reduce_across_dp(params)
    if parallel.layout().dp > 1:
        dist.all_reduce(local, group=parallel.dp_group())
    return float(local)


def minibatch_step(model: torch.nn.Module, optim: torch.optim.Optimizer, micro_batches: list[list[int]],
                   micro_loss: MicroLoss, *, grad_clip: float) -> dict[str, float]:
    """accumulate_grads + clip + optimizer step; returns the mini-batch `loss` and `grad_norm` (pre-clip)."""
    loss = accumulate_grads(model, micro_batches, micro_loss)
    params = trainable(model)
    norm = clip_grads(params, grad_clip)
    optim.step()
    zero_grads(params)
    return {"loss": loss, "grad_norm": norm}


def chunks(rows: list[int], size: int) -> list[list[int]]:
    return [rows[i:i + size] for i in range(0, len(rows), size)]
