"""PRIME's online accuracy filter (prime_spec.md 6.1): keep a prompt's group iff low <= mean score <= high.

Float safety: the bounds are inclusive, and the means that sit exactly on them must be kept however the
scores arrive. 1/5 = 0.2 and 4/5 = 0.8 are exact in float64 when averaged there, but a float32 tensor
averages to 0.2f = 0.20000000298 and 0.8f = 0.80000001192, and the latter is *above* 0.8 in float64.
So the mean is taken in float64 with math.fsum (exactly rounded), and each bound is widened by
``BOUND_TOL = 1e-6``. That is far below any gap between achievable means (scores are 0/1 for math and
passed/min(tests, 10) for code, so a group mean is a fraction with denominator <= 10*K; the nearest one
beyond a bound is >= 1/(10K) away, i.e. > 1e-6 for any K < 10^5), and far above float32 rounding of
values in [0, 1] (<= 6e-8).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

BOUND_TOL = 1e-6


def _flat_scores(scores: Sequence[float] | torch.Tensor, group_size: int) -> list[float]:
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1:
        raise ValueError(f"group_size must be an int >= 1, got {group_size!r}")
    if isinstance(scores, torch.Tensor):
        if scores.dim() == 2 and scores.shape[1] != group_size:
            raise ValueError(f"scores of shape {tuple(scores.shape)} must be [P, group_size={group_size}] or flat [B]")
        if scores.dim() not in (1, 2):
            raise ValueError(f"scores must be a 1-D tensor [B] (or [P, K]), got shape {tuple(scores.shape)}")
        flat = scores.detach().to("cpu", torch.float64).reshape(-1).tolist()
    else:
        flat = []
        for i, s in enumerate(scores):
            if not isinstance(s, numbers.Real) and not (isinstance(s, torch.Tensor) and s.numel() == 1):
                raise ValueError(f"scores[{i}] is a {type(s).__name__}; pass a flat list of B floats "
                                 "(or a [B] / [P, K] tensor)")
            flat.append(float(s))
    if len(flat) % group_size:
        raise ValueError(f"len(scores)={len(flat)} is not a multiple of group_size={group_size} "
                         "(groups of K responses must be contiguous)")
    for i, s in enumerate(flat):
        if not math.isfinite(s):
            raise ValueError(f"scores[{i}] (group {i // group_size}) is {s}; verifier scores must be finite")
    return flat


def group_means(scores: Sequence[float] | torch.Tensor, group_size: int) -> list[float]:
    """Mean score of each contiguous group of ``group_size`` (float64, exactly rounded sum)."""
    flat = _flat_scores(scores, group_size)
    return [math.fsum(flat[i:i + group_size]) / group_size for i in range(0, len(flat), group_size)]


def filter_groups(scores: Sequence[float] | torch.Tensor, group_size: int, *, low: float = 0.2,
                  high: float = 0.8) -> list[bool]:
    """One bool per group: keep iff ``low <= mean(group scores) <= high`` (inclusive, float-safe).

    scores: the B = P*K verifier scores, each prompt's K responses contiguous (a list, a [B] tensor, or a
    [P, K] tensor). Defaults are PRIME's ``accuracy_lower_bound`` / ``accuracy_upper_bound``.
    """
    if not (isinstance(low, (int, float)) and isinstance(high, (int, float))) or not low <= high:
        raise ValueError(f"filter bounds must be numbers with low <= high, got low={low!r}, high={high!r}")
    return [low - BOUND_TOL <= m <= high + BOUND_TOL for m in group_means(scores, group_size)]
