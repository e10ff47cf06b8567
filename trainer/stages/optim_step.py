"""One optimizer step over a mini-batch of rows: packed micro-batches, globally scaled losses, then
megatron-core's DP gradient sum (DDP), TP/PP-aware clipping and AdamW (trainer/optimizer.py). Shared by the
PRM update, the policy update and SFT.

A loss is described by a `MicroLoss`: the batch, the temperature its log-probs are taken at, and
`share(rows, logp_BR)`, the micro-batch's share of the mini-batch loss from the rows' response log-probs
(or, at PP=1, from what its own `forward(model, rows)` returns: the PRM's fused head, stages/prm_head.py).
Splitting "rows -> log-probs" (done here, by the model) from "log-probs -> loss share" lets the same loss
run at PP=1 (a plain forward + backward per micro-batch) and at PP>1 (Megatron's pipeline schedule, where
only the last stage sees log-probs)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .. import parallel
from ..batch import TrainBatch
from ..optimizer import MegatronAdamW, finalize_grads
from .logprobs import forward_rows
from .pipeline import run_pipeline


@dataclass(frozen=True)
class MicroLoss:
    """share(rows, logp [len(rows), R] fp32) -> the micro-batch's share of the mini-batch loss, scaled by
    global counts, so the shares of all micro-batches on all DP ranks sum to the mini-batch loss whatever
    the packing. With PP>1 `share` runs on the last pipeline stage only."""

    batch: TrainBatch
    share: Callable[[list[int], Any], torch.Tensor]
    temperature: float = 1.0
    # PP=1: what `share` gets instead of the rows' log-probs at `temperature` (forward_rows), e.g. both PRIME
    # models' scores from one fused head call; None: forward_rows. Not supported with PP>1 (the schedule
    # hands the last stage's model output to the loss).
    forward: Callable[[torch.nn.Module, list[int]], Any] | None = None


def _idle_rank_loss(micro_loss: MicroLoss) -> MicroLoss:
    """A zero-weighted share of row 0: a DP rank with no rows in a mini-batch still runs one backward, so
    its DDP buckets are reduced in the same order as every other rank's (overlapped reduction is started by
    the backward hooks). Its gradient contribution is exactly 0 and it records nothing; the rank would be
    waiting for the others anyway."""
    return MicroLoss(micro_loss.batch, lambda rows, logp: logp.sum() * 0.0, micro_loss.temperature)


def accumulate_grads(model: torch.nn.Module, optim: MegatronAdamW, micro_batches: list[list[int]],
                     micro_loss: MicroLoss) -> torch.Tensor:
    """Backward every micro-batch's loss share into DDP's gradient buffer (DP communication only after the
    last one), then finalize: gradients summed over DP ranks and tied-embedding copies over PP stages.
    Returns the mini-batch loss, on every rank, as a float64 0-dim tensor on the batch's device (not read
    to the host: stages/step_metrics.py)."""
    optim.zero_grad()
    model.train()
    local = torch.zeros((), dtype=torch.float64, device=micro_loss.batch.device)
    if not micro_batches and parallel.layout().dp > 1:
        micro_batches, micro_loss = [[0]], _idle_rank_loss(micro_loss)
    if parallel.layout().pp == 1:
        for i, rows in enumerate(micro_batches):
            with model.no_sync() if i < len(micro_batches) - 1 else contextlib.nullcontext():
                if micro_loss.forward is not None:
                    out = micro_loss.forward(model, rows)
                else:
                    out = forward_rows(model, micro_loss.batch, rows, temperature=micro_loss.temperature)
                loss = micro_loss.share(rows, out)
                loss.backward()
            local += loss.detach().double()
    else:
        if micro_loss.forward is not None:
            raise ValueError("a MicroLoss with its own forward runs at PP=1 only")

        def share(rows: list[int], logp: torch.Tensor) -> torch.Tensor:
            loss = micro_loss.share(rows, logp)
            local.add_(loss.detach().double())
            return loss

        # the schedule skips the DP sync on all but the last micro-batch (config.no_sync_func)
        run_pipeline(model, micro_loss.batch, micro_batches, share, temperature=micro_loss.temperature,
                     forward_only=False)
    finalize_grads(model)
    if parallel.layout().dp > 1:
        dist.all_reduce(local, group=parallel.dp_group())
    parallel.broadcast_from_last_stage(local)  # the losses exist on the last stage only
    return local


@dataclass(frozen=True)
class MinibatchStats:
    """One optimizer step's mini-batch loss (float64 0-dim, on the device) and gradient norm before
    clipping (a host float: Megatron's clip reads it to the host to scale the gradients)."""

    loss: torch.Tensor
    grad_norm: float


def minibatch_step(model: torch.nn.Module, optim: MegatronAdamW, micro_batches: list[list[int]],
                   micro_loss: MicroLoss) -> MinibatchStats:
    """accumulate_grads + Megatron's clip and AdamW step (the clip threshold is the optimizer's config)."""
    loss = accumulate_grads(model, optim, micro_batches, micro_loss)
    return MinibatchStats(loss, optim.step())


def chunks(rows: list[int], size: int) -> list[list[int]]:
    return [rows[i:i + size] for i in range(0, len(rows), size)]
