"""One optimizer step over a mini-batch of rows: packed micro-batches, globally scaled losses, DP gradient
sum, TP/PP-aware clipping. Shared by the PRM update, the policy update and SFT.

A loss is described by a `MicroLoss`: the batch, the temperature its log-probs are taken at, and
`share(rows, logp_BR)`, the micro-batch's share of the mini-batch loss from the rows' response log-probs.
Splitting "rows -> log-probs" (done here, by the model) from "log-probs -> loss share" lets the same loss
run at PP=1 (a plain forward + backward per micro-batch) and at PP>1 (Megatron's pipeline schedule, where
only the last stage sees log-probs)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .. import parallel
from ..batch import TrainBatch
from ..grads import clip_grads, reduce_across_dp, sync_tied_embedding_grads, trainable, zero_grads
from .logprobs import forward_rows
from .pipeline import run_pipeline


@dataclass(frozen=True)
class MicroLoss:
    """share(rows, logp [len(rows), R] fp32) -> the micro-batch's share of the mini-batch loss, scaled by
    global counts, so the shares of all micro-batches on all DP ranks sum to the mini-batch loss whatever
    the packing. With PP>1 `share` runs on the last pipeline stage only."""

    batch: TrainBatch
    share: Callable[[list[int], torch.Tensor], torch.Tensor]
    temperature: float = 1.0


def accumulate_grads(model: torch.nn.Module, micro_batches: list[list[int]], micro_loss: MicroLoss) -> float:
    """Backward every micro-batch's loss share, then sum gradients over DP ranks (and tied-embedding copies
    over PP stages). Returns the mini-batch loss, on every rank."""
    params = trainable(model)
    zero_grads(params)
    model.train()
    local = torch.zeros((), dtype=torch.float64, device=micro_loss.batch.device)
    if parallel.layout().pp == 1:
        for rows in micro_batches:
            logp = forward_rows(model, micro_loss.batch, rows, temperature=micro_loss.temperature)
            loss = micro_loss.share(rows, logp)
            loss.backward()
            local += loss.detach().double()
    else:
        def share(rows: list[int], logp: torch.Tensor) -> torch.Tensor:
            loss = micro_loss.share(rows, logp)
            local.add_(loss.detach().double())
            return loss

        run_pipeline(model, micro_loss.batch, micro_batches, share, temperature=micro_loss.temperature,
                     forward_only=False)
        sync_tied_embedding_grads(params)
    reduce_across_dp(params)
    if parallel.layout().dp > 1:
        dist.all_reduce(local, group=parallel.dp_group())
    parallel.broadcast_from_last_stage(local)  # the losses exist on the last stage only
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
