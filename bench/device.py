"""The benchmark device and the two things every suite must do differently on it.

CUDA kernels run asynchronously: a timer around a launch measures the launch, so every timed call is
wrapped to synchronize before it returns. Device memory is not in the process's resident set, so the peak
extra memory of a call is torch's allocator peak above what was allocated before it; on CPU it is the
resident-set peak (bench/memory.py).
"""

from __future__ import annotations

import time
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


def interleaved_min_seconds(calls: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """{"<name>_wall_s", "<name>_cpu_s"}: the minimum over `rounds` of each call's wall and process CPU time,
    the calls alternating round by round. On a shared machine the load drifts between sequential cases;
    interleaving exposes every call to the same drift, and CPU seconds are not inflated by a busy neighbour.
    The calls must already synchronize (see `synchronized`)."""
    wall: dict[str, list[float]] = {name: [] for name in calls}
    cpu: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            w0, c0 = time.perf_counter(), time.process_time()
            call()
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    return {f"{name}_{what}_s": min(vals[name]) for name in calls for what, vals in (("wall", wall), ("cpu", cpu))}
