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

from .. import packing, parallel
from ..batch import TrainBatch, response_columns
from .pipeline import run_pipeline


def micro_batch_plan(batch: TrainBatch, rows: list[int], budget: int) -> list[list[int]]:
    lay = parallel.layout()
    return packing.plan(rows, batch.seq_tokens.tolist(), budget=budget, dp_rank=lay.dp_rank, dp=lay.dp)


def forward_rows(model: torch.nn.Module, batch: TrainBatch, rows: list[int], *, temperature: float = 1.0
                 ) -> torch.Tensor:
    """fp32 [len(rows), R] response log-probs of `rows` in one packed pass (differentiable under grad mode).
    PP=1 only (with PP>1 micro-batches go through stages.pipeline.run_pipeline)."""
    from primeflow.models import sequence_logprobs

    idx = torch.tensor(rows, dtype=torch.int64)
    attention = batch.attention_mask[idx]
    T = int(attention.sum(-1).max())
    logp_bt1 = sequence_logprobs(model, batch.input_ids[idx, :T], attention_mask=attention[:, :T],
                                 temperature=temperature)
    return response_columns(logp_bt1, batch.prompt_len[idx], batch.response_mask[idx])


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
    out = torch.zeros(batch.response_mask.shape, dtype=torch.float32)
    if plan is None:
        plan = micro_batch_plan(batch, list(range(batch.rows)), budget)
    try:
        if parallel.layout().pp == 1:
            for rows in plan:
                out[rows] = forward_rows(model, batch, rows, temperature=temperature)
        else:
            def record(rows: list[int], logp: torch.Tensor) -> None:
                out[rows] = logp

            run_pipeline(model, batch, plan, record, temperature=temperature, forward_only=True)
    finally:
        model.train(was_training)
    return all_rows_sum(out)
