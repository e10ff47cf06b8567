"""Sequences as contiguous row ranges (cu_seqlens) for the per-sequence reward sums of prime_token_rewards:
each row's sequence id, and a fixed-order segmented scan. Shared by the one-launch path (op.py), the
vocab-split and vocab-parallel paths (sharded.py)."""

from __future__ import annotations

import torch


def sequence_ids(cu_seqlens: torch.Tensor, n_rows: int) -> torch.Tensor:
    """int64 [N]: the sequence of each row (empty sequences own no row), without a host sync."""
    rows = torch.arange(n_rows, device=cu_seqlens.device, dtype=torch.int64)
    return torch.searchsorted(cu_seqlens[1:].to(torch.int64).contiguous(), rows, right=True)


def segmented_total(values_T: torch.Tensor, keys_T: torch.Tensor) -> torch.Tensor:
    """Inclusive segmented scan over runs of equal consecutive keys (Hillis-Steele doubling): the last element
    of a run holds the run's total. ceil(log2 T) elementwise steps on a [T] vector, a fixed addition order
    (deterministic on every device, unlike index_add_ / cumsum on CUDA), and tl.where-style selection so a
    NaN never crosses into another run."""
    out = values_T
    d = 1
    while d < out.shape[0]:
        same = keys_T[d:] == keys_T[:-d]
        out = torch.cat([out[:d], out[d:] + torch.where(same, out[:-d], torch.zeros_like(out[:-d]))])
        d *= 2
    return out
