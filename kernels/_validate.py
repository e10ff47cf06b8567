"""Argument checks shared by every op: bad input raises ValueError naming the argument and what was expected."""

from __future__ import annotations

import math

import torch

from ._library import values_readable


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def check_float_matrix(name: str, tensor: torch.Tensor) -> None:
    require(isinstance(tensor, torch.Tensor), f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    require(tensor.dim() == 2, f"{name} must be 2-D [N, V], got shape {tuple(tensor.shape)}")
    require(tensor.is_floating_point(), f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")


def check_labels(name: str, labels: torch.Tensor, n_rows: int, vocab_size: int | None, device: torch.device) -> None:
    """labels: int64 [N] on the same device, every id in [0, vocab_size) when vocab_size is given.

    The range check reads labels' min/max, which synchronises a CUDA stream once per call; an out-of-range
    id would otherwise be an out-of-bounds read inside the kernel. It is skipped where values cannot be read
    (fake tensors, torch.compile tracing: kernels/_library.py).
    """
    require(isinstance(labels, torch.Tensor), f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    require(labels.dtype == torch.int64, f"{name} must be int64, got dtype {labels.dtype}")
    require(labels.dim() == 1 and labels.shape[0] == n_rows,
            f"{name} must have shape [{n_rows}] (one id per logits row), got {tuple(labels.shape)}")
    require(labels.device == device, f"{name} is on {labels.device} but logits are on {device}")
    if vocab_size is not None and labels.numel() > 0 and values_readable(labels):
        lo, hi = int(labels.min()), int(labels.max())
        require(lo >= 0 and hi < vocab_size,
                f"{name} must lie in [0, {vocab_size}) (the vocabulary), got values in [{lo}, {hi}]")


def check_temperature(temperature: float) -> None:
    require(isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0,
            f"temperature must be a finite number > 0, got {temperature!r}")
