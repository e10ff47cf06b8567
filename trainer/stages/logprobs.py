"""Per-token log-probs of a model on the batch's responses, through packed micro-batches.

Each DP rank computes its share of rows; the results are combined with one SUM all-reduce over the DP
group (every row is owned by exactly one rank, the others contribute exact zeros), so every rank ends with
the full [B, R] tensor. With PP > 1 the micro-batches run through Megatron's pipeline schedule and only the
last stage has log-probs: it broadcasts the [B, R] result to the other stages of its pipeline, so
advantages, rewards and metrics are identical on every rank.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from primeflow.models import logprobs as packed_io

from .. import packing, parallel
from ..batch import TrainBatch, response_columns
from .pipeline import run_pipeline


def micro_batch_plan(batch: TrainBatch, rows: list[int], budget: int) -> list[list[int]]:
    lay = parallel.layout()
    return packing.plan(rows, batch.seq_lens, budget=budget, dp_rank=lay.dp_rank, dp=lay.dp)


def micro_batch_tensors(batch: TrainBatch, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(input_ids [b, T], row index [b] on the batch's device, host lengths [b]) of `rows`, T their longest
    sequence: what packing needs, with the layout taken from the host (no device read-back)."""
    idx = packed_io.host_to_device(rows, torch.int64, batch.device)
    lengths = [batch.seq_lens[r] for r in rows]
    return batch.input_ids.index_select(0, idx).narrow(1, 0, max(lengths)), idx, lengths


def forward_rows(model: torch.nn.Module, batch: TrainBatch, rows: list[int], *, temperature: float = 1.0
                 ) -> torch.Tensor:
    """fp32 [len(rows), R] response log-probs of `rows` in one packed pass (differentiable under grad mode).
    PP=1 only (with PP>1 micro-batches go through stages.pipeline.run_pipeline)."""
    from primeflow.models import sequence_logprobs

    input_ids, idx, lengths = micro_batch_tensors(batch, rows)
    logp_bt1 = sequence_logprobs(model, input_ids, lengths=lengths, temperature=temperature)
    return response_columns(logp_bt1, batch.prompt_len[idx], batch.response_mask[idx])


def row_index(rows: list[int], like: torch.Tensor) -> torch.Tensor:
    """Row indices as a tensor on `like`'s device (indexing with a Python list would copy it synchronously)."""
    return packed_io.host_to_device(rows, torch.int64, like.device)


def all_rows_sum(local_BR: torch.Tensor) -> torch.Tensor:
    """In place: the SUM over DP ranks (each row owned by one rank), then (PP > 1) the last stage's result on
    every stage of the pipeline. Every rank of the world ends with the same tensor."""
    if parallel.layout().dp > 1:
        dist.all_reduce(local_BR, group=parallel.dp_group())
    return parallel.broadcast_from_last_stage(local_BR)


@torch.no_grad()
def batch_logprobs(model: torch.nn.Module, batch: TrainBatch, *, budget: int, temperature: float = 1.0,
                   plan: list[list[int]] | None = None) -> torch.Tensor:
    """fp32 [B, R] log-probs of every response token (0 on padding), on every rank. `plan` (this rank's
    micro-batches, default: all rows packed within `budget`) fixes the packing: two models with equal weights
    scored on the same plan see the same GEMM shapes and give bitwise-equal log-probs on any host."""
    was_training = model.training
    model.eval()
    out = torch.zeros(batch.response_mask.shape, dtype=torch.float32, device=batch.device)
    if plan is None:
        plan = micro_batch_plan(batch, list(range(batch.rows)), budget)
    try:
        if parallel.layout().pp == 1:
            for rows in plan:
                out[row_index(rows, out)] = forward_rows(model, batch, rows, temperature=temperature)
        else:
            def record(rows: list[int], logp: torch.Tensor) -> None:
                out[row_index(rows, out)] = logp

            run_pipeline(model, batch, plan, record, temperature=temperature, forward_only=True)
    finally:
        model.train(was_training)
    return all_rows_sum(out)
