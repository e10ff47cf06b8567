"""sequence_logprobs: the public way to score token sequences with a Megatron model from build_model.

Padded batches are packed: each row's valid tokens become one sequence of a THD batch (cu_seqlens), so no
compute is spent on padding and every sequence starts at position 0 whatever side it was padded on (the
way vLLM saw it). The model's log-prob head (gpt.PrimeGPTModel) returns fp32 log-probs without building
[tokens, vocab] logits. With pipeline parallelism the forward runs through Megatron's schedule (forward
only) and only the last stage gets the result.

Legend: B rows, T positions, t packed tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core import parallel_state
from megatron.core.packed_seq_params import PackedSeqParams


@dataclass(frozen=True)
class PackedBatch:
    """A padded [B, T] batch packed into one THD row plus what is needed to scatter results back."""

    tokens_1t: torch.Tensor       # int64 [1, t]
    labels_1t: torch.Tensor       # int64 [1, t]: next token within the same sequence (0 at each last token)
    position_ids_1t: torch.Tensor  # int64 [1, t]: 0.. within each sequence
    params: PackedSeqParams
    starts_B: list[int]           # first valid column of each row
    lengths_B: list[int]          # valid tokens of each row


def pack_padded(input_ids_BT: torch.Tensor, attention_mask_BT: torch.Tensor) -> PackedBatch:
    """Pack the valid tokens of each row (a contiguous run of 1s in attention_mask; left or right padding).

    Rows with no valid token are allowed (they contribute nothing)."""
    if attention_mask_BT.shape != input_ids_BT.shape:
        raise ValueError(f"attention_mask shape {list(attention_mask_BT.shape)} != input_ids shape "
                         f"{list(input_ids_BT.shape)}")
    mask = attention_mask_BT.to(torch.bool).cpu()
    starts, lengths, pieces, labels, positions = [], [], [], [], []
    for b in range(mask.shape[0]):
        cols = mask[b].nonzero().flatten()
        n = int(cols.numel())
        start = int(cols[0]) if n else 0
        if n and int(cols[-1]) - start + 1 != n:
            raise ValueError(f"attention_mask row {b} is not one contiguous run of 1s (only left or right "
                             "padding is supported)")
        starts.append(start)
        lengths.append(n)
        seq = input_ids_BT[b, start:start + n]
        pieces.append(seq)
        labels.append(torch.cat([seq[1:], seq.new_zeros(min(n, 1))]))
        positions.append(torch.arange(n, device=seq.device))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32,
                      device=input_ids_BT.device)
    max_len = max(lengths) if lengths else 0
    params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=max_len,
                             max_seqlen_kv=max_len)
    return PackedBatch(torch.cat(pieces)[None].to(torch.int64), torch.cat(labels)[None].to(torch.int64),
                       torch.cat(positions)[None], params, starts, lengths)


def unpack_logprobs(logp_1t: torch.Tensor, packed: PackedBatch, T: int) -> torch.Tensor:
    """[1, t] per-packed-token log-probs of the next token -> [B, T-1] (0 where the target is padding)."""
    out = logp_1t.new_zeros(len(packed.lengths_B), T - 1)
    offset = 0
    for b, (start, n) in enumerate(zip(packed.starts_B, packed.lengths_B, strict=True)):
        if n > 1:
            # Packed token i of this row predicts row column start+i+1, stored at column start+i.
            out[b, start:start + n - 1] = logp_1t[0, offset:offset + n - 1]
        offset += n
    return out


def _forward(model, tokens, position_ids, labels, packed_params):
    return model(tokens, position_ids, None, labels=labels, packed_seq_params=packed_params)


def sequence_logprobs(model, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                      temperature: float = 1.0) -> torch.Tensor | None:
    """log p(input_ids[:, t+1] | input_ids[:, :t+1]) as fp32 [B, T-1]; None off the last pipeline stage.

    attention_mask [B, T] (1 = token, 0 = padding; left or right padding): positions whose target is padding
    are 0. `temperature` divides the logits (score at the sampling temperature). Differentiable when called
    under grad mode (PP=1); with PP>1 this is forward only (training goes through the trainer's schedule).
    """
    if input_ids.dim() != 2 or input_ids.shape[1] < 2:
        raise ValueError(f"input_ids must be [B, T] with T >= 2, got shape {list(input_ids.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    B, T = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    packed = pack_padded(input_ids, attention_mask)
    unwrapped = model.module if hasattr(model, "module") else model
    old_temperature = unwrapped.logprob_temperature
    unwrapped.logprob_temperature = float(temperature)
    try:
        if parallel_state.get_pipeline_model_parallel_world_size() == 1:
            logp_1t = _forward(model, packed.tokens_1t, packed.position_ids_1t, packed.labels_1t, packed.params)
        else:
            logp_1t = _pipeline_forward(model, packed)
    finally:
        unwrapped.logprob_temperature = old_temperature
    if logp_1t is None:
        return None
    return unpack_logprobs(logp_1t, packed, T)


def _pipeline_forward(model, packed: PackedBatch) -> torch.Tensor | None:
    """One micro-batch through Megatron's pipeline schedule, forward only."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from .compat import enable_cpu_megatron

    enable_cpu_megatron()
    result: list[torch.Tensor] = []

    def forward_step(data_iterator, model_chunk):
        out = _forward(model_chunk, packed.tokens_1t, packed.position_ids_1t, packed.labels_1t, packed.params)

        def collect(output_tensor):
            result.append(output_tensor.detach())
            return output_tensor.sum() * 0.0, {}

        return out, collect

    t = packed.tokens_1t.shape[1]
    get_forward_backward_func()(forward_step_func=forward_step, data_iterator=iter([None]), model=[model],
                                num_microbatches=1, seq_length=t, micro_batch_size=1, forward_only=True)
    return result[0] if result else None
