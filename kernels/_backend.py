"""Which implementation runs an op: Triton (CUDA, or CPU under TRITON_INTERPRET=1), C++, or the reference."""

from __future__ import annotations

import os
from enum import Enum

import torch

from ._ext import HAS_EXTENSION


class Backend(str, Enum):
    TRITON = "triton"
    CPP = "cpp"
    TORCH = "torch"  # a vectorized / chunked PyTorch implementation that is not the reference
    REFERENCE = "reference"


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def select_backend(tensor: torch.Tensor, *, has_triton: bool, has_cpp: bool) -> Backend:
    """CUDA → Triton; CPU → Triton under TRITON_INTERPRET=1 (how kernels are validated here), else C++
    when the op has a C++ implementation and the extension is built, else the PyTorch reference."""
    if tensor.is_cuda or triton_interpret():
        if has_triton:
            return Backend.TRITON
        return Backend.REFERENCE
    if has_cpp and HAS_EXTENSION:
        return Backend.CPP
    return Backend.REFERENCE


def triton_or_torch(tensor: torch.Tensor) -> Backend:
    """For ops whose CPU implementation is plain (vectorized) PyTorch: Triton where Triton runs, else that."""
    return Backend.TRITON if tensor.is_cuda or triton_interpret() else Backend.TORCH
