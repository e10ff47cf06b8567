"""final_hidden_states: a Megatron model's last hidden states (after the final norm) on a packed batch, its
output layer skipped, and output_weight, that layer's weight: the (hidden, weight) pair of heads fused
outside the model (kernels.linear_prime_rewards scores the PRM and the reference in one call).

Legend: t packed tokens, H hidden size, V vocabulary rows.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel import gather_from_sequence_parallel_region

from .gpt import unwrap_model
from .logprobs import PackedBatch


def output_weight(model: torch.nn.Module) -> torch.Tensor:
    """The [V, H] output projection (the embedding when tied): the parameter itself, so a head computed from
    it accumulates its gradient like the model's own head does."""
    return unwrap_model(model).output_weight_shard()


def final_hidden_states(model: torch.nn.Module, packed: PackedBatch) -> torch.Tensor:
    """[t, H] hidden states of all the packed tokens in the output weight's dtype, on every TP rank,
    differentiable w.r.t. the model under grad mode; row i is what the model's head turns into the log-probs
    of packed.labels_1t[0, i].

    TP > 1: the consumer is a vocab-parallel head that all-reduces d hidden itself (kernels.linear_prime_rewards
    and linear_token_logprobs with tp_group), so no copy_to_tensor_model_parallel_region here; under sequence
    parallelism each rank's t / tp tokens are gathered over TP with tensor_parallel_output_grad=False (the
    backward keeps this rank's slice of the already-reduced gradient), exactly as models/gpt.py feeds its own
    fused head. PP = 1 only: under PP the head lives on the last stage and runs inside Megatron's schedule."""
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        raise ValueError("final_hidden_states runs at PP = 1 only (see its docstring)")
    inner = unwrap_model(model)
    inner.returns_hidden = True
    try:
        hidden_tH = model(packed.tokens_1t, packed.position_ids_1t, None, labels=packed.labels_1t,
                          packed_seq_params=packed.params)
    finally:
        inner.returns_hidden = False
    if parallel_state.get_tensor_model_parallel_world_size() > 1 and inner.config.sequence_parallel:
        hidden_tH = gather_from_sequence_parallel_region(hidden_tH, tensor_parallel_output_grad=False)  # b = 1
    # Float16Module hands a bf16/fp16 model's outputs back as fp32 copies: casting back is exact.
    return hidden_tH.to(output_weight(model).dtype)
