"""Argument checks for the fused-head ops (ValueError naming the argument and the expected shape)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from .._validate import check_labels, check_temperature, require


def check_linear_inputs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, temperature: float,
                        tp_group: dist.ProcessGroup | None, *, name: str = "") -> None:
    """hidden [N, H] and weight [V, H] floating point on one device; labels int64 [N] in [0, V_global)."""
    h_name, w_name = f"{name}hidden", f"{name}weight"
    for arg, value in ((h_name, hidden), (w_name, weight)):
        require(isinstance(value, torch.Tensor), f"{arg} must be a torch.Tensor, got {type(value).__name__}")
        require(value.dim() == 2, f"{arg} must be 2-D, got shape {tuple(value.shape)}")
        require(value.is_floating_point(), f"{arg} must be floating point, got dtype {value.dtype}")
    require(weight.shape[1] == hidden.shape[1],
            f"{w_name} must have shape [V, {hidden.shape[1]}] (H of {h_name}), got {tuple(weight.shape)}")
    require(weight.device == hidden.device,
            f"{w_name} is on {weight.device} but {h_name} is on {hidden.device}")
    require(weight.dtype == hidden.dtype,
            f"{w_name} dtype {weight.dtype} must equal {h_name} dtype {hidden.dtype}")
    check_temperature(temperature)
    vocab = weight.shape[0]
    if tp_group is not None:
        vocab *= dist.get_world_size(tp_group)
    check_labels("labels", labels, hidden.shape[0], vocab, hidden.device)
