"""The benchmark device and the two things every suite must do differently on it.

CUDA kernels run asynchronously: a timer around a launch measures the launch, so every timed call is
wrapped to synchronize before it returns. Device memory is not in the process's resident set, so the peak
extra memory of a call is torch's allocator peak above what was allocated before it; on CPU it is the
resident-set peak (bench/memory.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from memory import peak_extra_bytes

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def synchronized(fn: Callable[..., Any], device: str = DEVICE) -> Callable[..., Any]:
    """fn, returning only when its device work is done (what a benchmark timer must measure)."""
    if device != "cuda":
        return fn

    def call(*args: Any, **kwargs: Any) -> Any:
        out = fn(*args, **kwargs)
        torch.cuda.synchronize()
        return out

    return call


def peak_extra_memory(fn: Callable[[], Any], device: str = DEVICE) -> tuple[Any, int]:
    """(fn(), bytes allocated at the call's worst moment above what was allocated before it)."""
    if device != "cuda":
        return peak_extra_bytes(fn)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    result = fn()
    torch.cuda.synchronize()
    return result, torch.cuda.max_memory_allocated() - base
