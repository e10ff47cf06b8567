"""final_hidden_states: a Megatron model's last hidden states (after the final norm) on a packed batch, its
output layer skipped, and output_weight, that layer's weight: the (hidden, weight) pair of heads fused
outside the model (kernels.linear_prime_rewards scores the PRM and the reference in one call).

Legend: t packed tokens, H hidden size, V vocabulary rows.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state

from .gpt import unwrap_model
from .logprobs import PackedBatch


def output_weight(model: torch.nn.Module) -> torch.Tensor:
    """The [V, H] output projection (the embedding when tied): the parameter itself, so a head computed from
    it accumulates its gradient like the model's own head does."""
    return unwrap_model(model).output_weight_shard()


def final_hidden_states(model: torch.nn.Module, packed: PackedBatch) -> torch.Tensor:
    """[t, H] hidden states of the packed tokens in the output weight's dtype, differentiable w.r.t. the
    model under grad mode; row i is what the model's head turns into the log-probs of packed.labels_1t[0, i].

    TP = 1 and PP = 1 only: under TP the consumer would need a vocab-parallel head (and, with sequence
    parallelism, the gathered tokens' gradient convention), and under PP the head lives on the last stage
    and runs inside Megatron's schedule."""
    if parallel_state.get_tensor_model_parallel_world_size() > 1 or \
            parallel_state.get_pipeline_model_parallel_world_size() > 1:
        raise ValueError("final_hidden_states runs at TP = 1 and PP = 1 only (see its docstring)")
    inner = unwrap_model(model)
    inner.returns_hidden = True
    try:
        hidden_tH = model(packed.tokens_1t, packed.position_ids_1t, None, labels=packed.labels_1t,
                          packed_seq_params=packed.params)
    finally:
        inner.returns_hidden = False
    # Float16Module hands a bf16/fp16 model's outputs back as fp32 copies: casting back is exact.
    return hidden_tH.to(output_weight(model).dtype)
