"""Packed micro-batches through Megatron's pipeline schedule (PP > 1): forward only (batch log-probs) or
forward + backward (the PRM, policy and SFT updates).

Every stage runs `megatron.core.pipeline_parallel.get_forward_backward_func()` (1F1B) over the same list
of micro-batches (rows of the batch); each micro-batch is packed exactly as `stages.logprobs.forward_rows`
packs it at PP=1, the first stage embeds it, hidden states travel between stages, and only the last stage
turns its output (per-token log-probs from the model's head) into [rows, R] response log-probs and hands
them to `on_logp(rows, logp_BR)`, which returns the micro-batch's loss share (training) or None.

Loss scaling: megatron-core 0.16.1 (`schedules.forward_step_calc_loss`) divides a loss returned as
`(loss, extra)` by num_microbatches, and one returned as `(loss, num_tokens, extra)` by num_tokens and
num_microbatches unless `config.calculate_per_token_loss` is set. Our shares are already scaled by global
counts (they sum to the mini-batch loss over micro-batches and DP ranks), so the schedule runs with
calculate_per_token_loss=True and the 3-tuple form: the share is back-propagated unchanged. Packed
micro-batches have different token counts, so `config.variable_seq_lengths=True` (stages exchange the
shape of every activation they send). Both flags are set for the call only and restored afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from ..batch import TrainBatch, response_columns

OnLogp = Callable[[list[int], torch.Tensor], "torch.Tensor | None"]


@contextlib.contextmanager
def _schedule_settings(model: torch.nn.Module, temperature: float) -> Iterator[None]:
    from primeflow.models import unwrap_model

    inner = unwrap_model(model)
    config = inner.config
    saved = (config.variable_seq_lengths, config.calculate_per_token_loss, inner.logprob_temperature)
    config.variable_seq_lengths, config.calculate_per_token_loss = True, True
    inner.logprob_temperature = float(temperature)
    try:
        yield
    finally:
        config.variable_seq_lengths, config.calculate_per_token_loss, inner.logprob_temperature = saved


def run_pipeline(model: torch.nn.Module, batch: TrainBatch, micro_batches: list[list[int]], on_logp: OnLogp, *,
                 temperature: float = 1.0, forward_only: bool) -> None:
    """Run `micro_batches` (lists of batch rows) through this rank's pipeline stage of `model`.

    Collective over the pipeline group: every stage of a pipeline must call it with the same micro-batches.
    `on_logp` runs on the last stage only. With forward_only=False the gradients of each returned share
    are accumulated into the parameters' .grad on every stage (nothing is zeroed or reduced here)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from primeflow.models.compat import enable_cpu_megatron
    from primeflow.models.logprobs import pack_rows, token_multiple, unpack_logprobs

    from .logprobs import micro_batch_tensors

    if not micro_batches:
        return
    enable_cpu_megatron()

    def forward_step(data_iterator, chunk):
        rows = next(data_iterator)
        input_ids, idx, lengths = micro_batch_tensors(batch, rows)
        T = input_ids.shape[1]
        packed = pack_rows(input_ids, [0] * len(rows), lengths, multiple_of=token_multiple(chunk))
        out = chunk(packed.tokens_1t, packed.position_ids_1t, None, labels=packed.labels_1t,
                    packed_seq_params=packed.params)

        def loss_func(logp_1t: torch.Tensor):
            logp_BR = response_columns(unpack_logprobs(logp_1t, packed, T), batch.prompt_len[idx],
                                       batch.response_mask[idx])
            share = on_logp(rows, logp_BR)
            if share is None:
                share = logp_1t.sum() * 0.0
            # 3-tuple + calculate_per_token_loss: the schedule back-propagates `share` unscaled
            return share, torch.ones((), dtype=torch.int, device=logp_1t.device), {}

        return out, loss_func

    first = micro_batches[0]
    with _schedule_settings(model, temperature):
        get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter(micro_batches), model=[model],
            num_microbatches=len(micro_batches),
            # ignored with variable_seq_lengths (shapes are exchanged), required by the signature
            seq_length=sum(batch.seq_lens[r] for r in first), micro_batch_size=1, forward_only=forward_only)
