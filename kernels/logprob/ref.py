"""Reference token log-probs: log_softmax + gather in fp32, written to be obviously correct.

Legend: N rows (tokens), V vocabulary (or this rank's vocab shard with tp_group).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn

from .._validate import check_float_matrix, check_labels, check_temperature


def token_logprobs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    tp_group: dist.ProcessGroup | None = None,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log softmax(logits / temperature)[label] per row, fp32 [N] (and the entropy of that softmax).

    With `tp_group`, `logits` is this rank's contiguous vocab shard (rank r holds columns
    [r*V_shard, (r+1)*V_shard)); the shards are gathered (differentiably) and the full op is applied.
    """
    check_float_matrix("logits", logits)
    check_temperature(temperature)
    logits_NV = logits
    if tp_group is not None:
        logits_NV = torch.cat(dist_fn.all_gather(logits.contiguous(), group=tp_group), dim=-1)
    check_labels("labels", labels, logits_NV.shape[0], logits_NV.shape[1], logits.device)

    logp_NV = torch.log_softmax(logits_NV.float() / temperature, dim=-1)
    logp_N = logp_NV.gather(-1, labels[:, None]).squeeze(-1)
    if not return_entropy:
        return logp_N
    # -inf columns have p = 0 and contribute 0; masking log p (not the product) keeps the gradient finite.
    finite_logp_NV = logp_NV.masked_fill(logp_NV == float("-inf"), 0.0)  # NaN stays NaN
    entropy_N = -(logp_NV.exp() * finite_logp_NV).sum(-1)
    return logp_N, entropy_N
