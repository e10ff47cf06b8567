"""Input/output types of `prime_token_rewards` and their validation."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .._library import values_readable
from .._validate import ValueChecks, check_labels, check_value, require

# A model is given either as logits [N, V] or as (hidden [N, H], lm_head weight [V, H]).
ModelInput = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class PrimeLogprobs(NamedTuple):
    """policy/prm/ref log-probs and reward: fp32 [N] each; policy_logp is None when no policy was given.

    With `cu_seqlens` (S sequences), the per-sequence pieces of the RLOO baseline m_i = sum_t r_it / n_i
    (prime_spec 7.3), over each sequence's valid (mask != 0) tokens: seq_reward_sum fp32 [S] (masked
    rewards are 0, so this is the sum of `reward` over the sequence) and seq_valid_count int64 [S]
    (0 for an empty or fully masked sequence). Both None without `cu_seqlens`.
    """

    policy_logp: torch.Tensor | None
    prm_logp: torch.Tensor
    ref_logp: torch.Tensor
    reward: torch.Tensor
    seq_reward_sum: torch.Tensor | None = None
    seq_valid_count: torch.Tensor | None = None


def model_vocab(name: str, model: ModelInput, n_rows: int) -> int:
    """Checks one model argument and returns its vocabulary size."""
    if isinstance(model, torch.Tensor):
        require(model.dim() == 2 and model.shape[0] == n_rows,
                f"{name} logits must have shape [{n_rows}, V], got {tuple(model.shape)}")
        require(model.is_floating_point(), f"{name} logits must be floating point, got {model.dtype}")
        return model.shape[1]
    require(isinstance(model, (tuple, list)) and len(model) == 2
            and all(isinstance(t, torch.Tensor) for t in model),
            f"{name} must be logits [N, V] or a (hidden [N, H], weight [V, H]) pair, "
            f"got {type(model).__name__}")
    hidden, weight = model
    require(hidden.dim() == 2 and hidden.shape[0] == n_rows,
            f"{name} hidden must have shape [{n_rows}, H], got {tuple(hidden.shape)}")
    require(weight.dim() == 2 and weight.shape[1] == hidden.shape[1],
            f"{name} weight must have shape [V, {hidden.shape[1]}], got {tuple(weight.shape)}")
    require(hidden.is_floating_point() and weight.dtype == hidden.dtype,
            f"{name} hidden/weight must share one floating dtype, got {hidden.dtype} and {weight.dtype}")
    require(weight.device == hidden.device,
            f"{name} weight is on {weight.device} but hidden on {hidden.device}")
    return weight.shape[0]


def model_device(model: ModelInput) -> torch.device:
    return model.device if isinstance(model, torch.Tensor) else model[0].device


def check_cu_seqlens(cu_seqlens: torch.Tensor, n_rows: int, device: torch.device,
                     checks: ValueChecks | None = None) -> None:
    """cu_seqlens: integer [S+1] on labels' device, 0 = cu[0] <= cu[1] <= ... <= cu[S] = N: sequence s is
    rows [cu[s], cu[s+1]) (empty when equal). The value conditions are queued on `checks` when given (read
    back with the call's other value checks), else read now."""
    require(isinstance(cu_seqlens, torch.Tensor) and cu_seqlens.dim() == 1 and cu_seqlens.numel() >= 1,
            f"cu_seqlens must be a 1-D integer tensor [S+1] (sequence s is rows cu_seqlens[s]:cu_seqlens[s+1]),"
            f" got {getattr(cu_seqlens, 'shape', type(cu_seqlens).__name__)}")
    require(cu_seqlens.dtype in (torch.int32, torch.int64),
            f"cu_seqlens must be int32 or int64, got dtype {cu_seqlens.dtype}")
    require(cu_seqlens.device == device, f"cu_seqlens is on {cu_seqlens.device} but labels are on {device}")
    if not values_readable(cu_seqlens):
        return
    check_value(checks, (cu_seqlens[0] == 0) & (cu_seqlens[-1] == n_rows),
             lambda: f"cu_seqlens must start at 0 and end at N={n_rows} (the number of labels), "
                     f"got {int(cu_seqlens[0])} ... {int(cu_seqlens[-1])}")
    steps = cu_seqlens.diff()
    check_value(checks, (steps >= 0).all(),
             lambda: f"cu_seqlens must be nondecreasing (sequence lengths >= 0), got a step of {int(steps.min())}")


def check_prime_inputs(labels: torch.Tensor, prm: ModelInput, ref: ModelInput, policy: ModelInput | None,
                       beta: float, mask: torch.Tensor | None, cu_seqlens: torch.Tensor | None = None, *,
                       vocab_shards: int = 1) -> None:
    """vocab_shards: the TP size of a vocab-parallel call (the models are this rank's shard of the vocabulary,
    labels global ids in [0, shard V * vocab_shards))."""
    require(isinstance(labels, torch.Tensor) and labels.dim() == 1,
            f"labels must be a 1-D int64 tensor [N], got {getattr(labels, 'shape', type(labels).__name__)}")
    n_rows = labels.shape[0]
    named = [("prm", prm), ("ref", ref)] + ([("policy", policy)] if policy is not None else [])
    vocabs = {name: model_vocab(name, model, n_rows) for name, model in named}
    require(len(set(vocabs.values())) == 1,
            f"prm, ref and policy must share one vocabulary size, got {vocabs}")
    for name, model in named:
        require(model_device(model) == labels.device,
                f"{name} is on {model_device(model)} but labels are on {labels.device}")
    checks = ValueChecks()  # the labels' range and cu_seqlens' values: one read-back for the call
    check_labels("labels", labels, n_rows, vocabs["prm"] * vocab_shards, labels.device, checks)
    require(isinstance(beta, (int, float)) and math.isfinite(beta),
            f"beta must be a finite number, got {beta!r}")
    if mask is not None:
        require(isinstance(mask, torch.Tensor) and tuple(mask.shape) == (n_rows,),
                f"mask must have shape [{n_rows}] (one entry per label), got {getattr(mask, 'shape', mask)}")
        require(mask.device == labels.device, f"mask is on {mask.device} but labels are on {labels.device}")
    if cu_seqlens is not None:
        check_cu_seqlens(cu_seqlens, n_rows, labels.device, checks)
    checks.run()
