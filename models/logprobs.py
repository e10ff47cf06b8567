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


def host_to_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A tensor of host values on `device`, copied without a device sync: a non-blocking host-to-device copy
    returns as soon as the values are staged, where `torch.tensor(values, device=...)` waits for the copy
    (and therefore for the work queued before it)."""
    return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)


def pack_rows(input_ids_BT: torch.Tensor, starts_B: list[int], lengths_B: list[int], *,
              multiple_of: int = 1) -> PackedBatch:
    """Pack row b's tokens [starts_B[b], starts_B[b] + lengths_B[b]) into one THD row, on input_ids' device.

    The layout comes from host integers (the caller knows it: the trainer keeps its rows' lengths on the
    host), so packing never reads device memory: the index tensors are built on the host and copied to the
    device once (non-blocking), the gathers run on the device, and there is no device-to-host sync.
    `multiple_of` > 1 (sequence parallelism: `token_multiple`) appends a padding sequence so the packed
    length divides evenly over the TP ranks; it attends only to itself and its outputs are never read."""
    if len(starts_B) != input_ids_BT.shape[0] or len(lengths_B) != input_ids_BT.shape[0]:
        raise ValueError(f"{input_ids_BT.shape[0]} rows but {len(starts_B)} starts and {len(lengths_B)} lengths")
    device = input_ids_BT.device
    T = input_ids_BT.shape[1]
    rows, cols, positions, is_last = [], [], [], []
    for b, (start, n) in enumerate(zip(starts_B, lengths_B, strict=True)):
        if n < 0 or start < 0 or start + n > T:
            raise ValueError(f"row {b}: tokens [{start}, {start + n}) do not fit in {T} columns")
        rows += [b] * n
        cols += range(start, start + n)
        positions += range(n)
        is_last += [False] * (n - 1) + [True] * min(n, 1)
    cu = [0]
    for n in lengths_B:
        cu.append(cu[-1] + n)
    pad = -cu[-1] % multiple_of
    if pad:  # token 0 of row 0 repeated, label 0, positions from 0: one more sequence in cu_seqlens
        rows += [0] * pad
        cols += [0] * pad
        positions += range(pad)
        is_last += [True] * pad
        cu.append(cu[-1] + pad)

    def to_device(values: list, dtype: torch.dtype) -> torch.Tensor:
        return host_to_device(values, dtype, device)

    # flat gathers (index_select) rather than advanced indexing: the same kernels, and they also trace
    # under FakeTensorMode with fake CUDA tensors (tests/trainer/test_device_placement.py)
    flat_ids = input_ids_BT.to(torch.int64).reshape(-1)
    flat_t = to_device([r * T + c for r, c in zip(rows, cols, strict=True)], torch.int64)
    tokens_t = flat_ids.index_select(0, flat_t)
    # the label of packed token i is the next token of the same row (0 after each row's last token)
    next_t = to_device([r * T + min(c + 1, T - 1) for r, c in zip(rows, cols, strict=True)], torch.int64)
    labels_t = torch.where(to_device(is_last, torch.bool), 0, flat_ids.index_select(0, next_t))
    cu_t = to_device(cu, torch.int32)
    max_len = max([*lengths_B, pad]) if lengths_B else pad
    params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu_t, cu_seqlens_kv=cu_t, max_seqlen_q=max_len,
                             max_seqlen_kv=max_len)
    positions_t = to_device(positions, torch.int64)
    return PackedBatch(tokens_t.unsqueeze(0), labels_t.unsqueeze(0), positions_t.unsqueeze(0), params,
                       list(starts_B), list(lengths_B))


def row_layout(attention_mask_BT: torch.Tensor) -> tuple[list[int], list[int]]:
    """(starts, lengths) of each row's valid tokens: one contiguous run of 1s (left or right padding). Reads
    the mask on the host: one device-to-host copy when it lives on a device (callers that know the layout,
    like the trainer, pass it to pack_rows / sequence_logprobs(lengths=...) instead)."""
    mask = attention_mask_BT.to(torch.bool).cpu()
    starts, lengths = [], []
    for b in range(mask.shape[0]):
        cols = mask[b].nonzero().flatten()
        n = int(cols.numel())
        start = int(cols[0]) if n else 0
        if n and int(cols[-1]) - start + 1 != n:
            raise ValueError(f"attention_mask row {b} is not one contiguous run of 1s (only left or right "
                             "padding is supported)")
        starts.append(start)
        lengths.append(n)
    return starts, lengths


def pack_padded(input_ids_BT: torch.Tensor, attention_mask_BT: torch.Tensor, *, multiple_of: int = 1
                ) -> PackedBatch:
    """Pack the valid tokens of each row (a contiguous run of 1s in attention_mask; left or right padding).

    Rows with no valid token are allowed (they contribute nothing)."""
    if attention_mask_BT.shape != input_ids_BT.shape:
        raise ValueError(f"attention_mask shape {list(attention_mask_BT.shape)} != input_ids shape "
                         f"{list(input_ids_BT.shape)}")
    return pack_rows(input_ids_BT, *row_layout(attention_mask_BT), multiple_of=multiple_of)


def token_multiple(model: torch.nn.Module) -> int:
    """What a packed token count must be a multiple of for `model`: its TP size under sequence parallelism
    (each TP rank holds t/tp of the tokens between the TP regions), else 1."""
    from .gpt import unwrap_model

    config = unwrap_model(model).config
    return config.tensor_model_parallel_size if config.sequence_parallel else 1


def unpack_logprobs(logp_1t: torch.Tensor, packed: PackedBatch, T: int) -> torch.Tensor:
    """[1, t] per-packed-token log-probs of the next token -> [B, T-1] (0 where the target is padding).
    One scatter on the device, indices from the packed layout's host integers."""
    rows, cols, src = [], [], []
    offset = 0
    for b, (start, n) in enumerate(zip(packed.starts_B, packed.lengths_B, strict=True)):
        # Packed token i of this row predicts row column start+i+1, stored at column start+i.
        rows += [b] * max(n - 1, 0)
        cols += range(start, start + n - 1)
        src += range(offset, offset + n - 1)
        offset += n
    device = logp_1t.device
    B = len(packed.lengths_B)
    flat_out = host_to_device([r * (T - 1) + c for r, c in zip(rows, cols, strict=True)], torch.int64, device)
    src_t = host_to_device(src, torch.int64, device)
    out = logp_1t.new_zeros(B * (T - 1))
    out = out.index_copy(0, flat_out, logp_1t.reshape(-1).index_select(0, src_t))
    return out.view(B, T - 1)


def _forward(model, tokens, position_ids, labels, packed_params):
    return model(tokens, position_ids, None, labels=labels, packed_seq_params=packed_params)


def sequence_logprobs(model, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                      temperature: float = 1.0, lengths: list[int] | None = None) -> torch.Tensor | None:
    """log p(input_ids[:, t+1] | input_ids[:, :t+1]) as fp32 [B, T-1]; None off the last pipeline stage.

    attention_mask [B, T] (1 = token, 0 = padding; left or right padding): positions whose target is padding
    are 0. `temperature` divides the logits (score at the sampling temperature). Differentiable when called
    under grad mode (PP=1); with PP>1 this is forward only (training goes through the trainer's schedule).
    `lengths` (host ints, right-padded rows) replaces attention_mask and skips reading it back from the
    device: the call then makes no device-to-host sync.
    """
    if input_ids.dim() != 2 or input_ids.shape[1] < 2:
        raise ValueError(f"input_ids must be [B, T] with T >= 2, got shape {list(input_ids.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    B, T = input_ids.shape
    multiple = token_multiple(model)
    if lengths is not None:
        packed = pack_rows(input_ids, [0] * B, list(lengths), multiple_of=multiple)
    elif attention_mask is None:
        packed = pack_rows(input_ids, [0] * B, [T] * B, multiple_of=multiple)
    else:
        packed = pack_padded(input_ids, attention_mask, multiple_of=multiple)
    from .gpt import unwrap_model

    unwrapped = unwrap_model(model)
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
