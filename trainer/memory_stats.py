"""Peak memory of the training process, logged with every step's metrics (the bench step breakdown reads it).

`memory/peak_rss_gb` is the process's peak resident set since it started (getrusage's ru_maxrss), the max over
all ranks. It is host memory: on CPU it includes the colocated vLLM engine (weights and KV cache) and the
Python heap, which is what decides whether a run fits the machine. On CUDA, `memory/peak_allocated_gb` is
torch's peak device allocation during the step (the allocator's peak is reset after every read), max over
ranks; vLLM's KV cache is preallocated through the same allocator, so it is part of the figure.
"""

from __future__ import annotations

import resource
import sys

import torch
import torch.distributed as dist

# ru_maxrss is in KiB on Linux and in bytes on macOS.
_RSS_UNIT_BYTES = 1 if sys.platform == "darwin" else 1024


def peak_rss_bytes() -> int:
    """This process's peak resident set size since it started."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _RSS_UNIT_BYTES


def peak_memory_metrics() -> dict[str, float]:
    """The step's memory metrics (GB = 1e9 bytes), max over every rank of the world (a collective call)."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    peaks = [float(peak_rss_bytes())]
    if cuda:
        peaks.append(float(torch.cuda.max_memory_allocated()))
        torch.cuda.reset_peak_memory_stats()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        peaks_t = torch.tensor(peaks, dtype=torch.float64, device=device)
        dist.all_reduce(peaks_t, op=dist.ReduceOp.MAX)
        peaks = peaks_t.tolist()
    out = {"memory/peak_rss_gb": peaks[0] / 1e9}
    if cuda:
        out["memory/peak_allocated_gb"] = peaks[1] / 1e9
    return out
