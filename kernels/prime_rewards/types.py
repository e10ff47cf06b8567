"""Input/output types of `prime_token_rewards` and their validation."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .._validate import check_labels, require

# A model is given either as logits [N, V] or as (hidden [N, H], lm_head weight [V, H]).
ModelInput = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class PrimeLogprobs(NamedTuple):
    """fp32 [N] each; policy_logp is None when no policy was given."""

    policy_logp: torch.Tensor | None
    prm_logp: torch.Tensor
    ref_logp: torch.Tensor
    reward: torch.Tensor


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


def check_prime_inputs(labels: torch.Tensor, prm: ModelInput, ref: ModelInput, policy: ModelInput | None,
                       beta: float, mask: torch.Tensor | None) -> None:
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
    check_labels("labels", labels, n_rows, vocabs["prm"], labels.device)
    require(isinstance(beta, (int, float)) and math.isfinite(beta),
            f"beta must be a finite number, got {beta!r}")
    if mask is not None:
        require(isinstance(mask, torch.Tensor) and tuple(mask.shape) == (n_rows,),
                f"mask must have shape [{n_rows}] (one entry per label), got {getattr(mask, 'shape', mask)}")
        require(mask.device == labels.device, f"mask is on {mask.device} but labels are on {labels.device}")
