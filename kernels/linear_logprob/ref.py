"""Reference fused-head log-probs: materialise logits = hidden @ weight.T in fp32, then `token_logprobs`.

Written to be obviously correct, not memory-efficient: it allocates the full [N, V] fp32 logits.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..logprob.ref import token_logprobs
from .validate import check_linear_inputs


def linear_token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    tp_group: dist.ProcessGroup | None = None,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log softmax(hidden @ weight.T / T)[label] per row, fp32 [N] (and the entropy).

    With `tp_group`, `weight` is this rank's contiguous vocab shard [V/world, H] and labels are global ids;
    the reference gathers the logit shards (differentiably) and applies the unsharded op.
    """
    check_linear_inputs(hidden, weight, labels, temperature, tp_group)
    logits_NV = hidden.float() @ weight.float().T
    return token_logprobs(logits_NV, labels, temperature=temperature, tp_group=tp_group,
                          return_entropy=return_entropy)
