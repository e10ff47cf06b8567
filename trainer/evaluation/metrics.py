"""avg@k and the unbiased pass@k estimator (Chen et al. 2021, "Evaluating Large Language Models Trained on
Code"), and their aggregation over a benchmark.

For one problem with ``n`` samples of which ``c`` are correct:

- avg@n = c / n (the mean accuracy over the samples; PRIME's Table 12 "avg@16"; with n=1 and greedy decoding
  it is the paper's pass@1);
- pass@k = 1 - C(n-c, k) / C(n, k), the probability that at least one of k samples drawn without replacement
  from the n is correct (unbiased for the model's pass@k). Needs k <= n.

A benchmark's metric is the mean over its problems; the table's Avg is the unweighted mean over benchmarks
(as in the paper).
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb


def pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k)/C(n, k) for one problem (exact integer binomials, so no overflow or cancellation)."""
    if not (isinstance(n, int) and isinstance(c, int) and isinstance(k, int)):
        raise TypeError(f"n, c, k must be ints, got {n!r}, {c!r}, {k!r}")
    if n < 1 or not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need n >= 1, 0 <= c <= n, 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def avg_at_k(correct: Sequence[bool | float]) -> float:
    """Mean accuracy over one problem's samples."""
    if len(correct) == 0:
        raise ValueError("avg@k of zero samples is undefined")
    return sum(float(x) for x in correct) / len(correct)


def default_ks(n: int) -> list[int]:
    """pass@k levels reported for n samples: 1, 2, 4, ... up to n, and n itself."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def benchmark_metrics(correct: Sequence[Sequence[bool]], ks: Sequence[int] | None = None) -> dict[str, float]:
    """``{"avg@n": ..., "pass@k": ... for k in ks, "n_problems": ...}`` from per-problem correctness lists.

    Every problem must have the same number of samples ``n``. Values are fractions in [0, 1].
    """
    if not correct:
        raise ValueError("no problems to aggregate")
    n = len(correct[0])
    if n == 0 or any(len(c) != n for c in correct):
        counts = sorted({len(c) for c in correct})
        raise ValueError(f"every problem needs the same number (>= 1) of samples; got sample counts {counts}")
    ks = default_ks(n) if ks is None else list(ks)
    out: dict[str, float] = {f"avg@{n}": sum(avg_at_k(c) for c in correct) / len(correct)}
    for k in ks:
        out[f"pass@{k}"] = sum(pass_at_k(n, int(sum(bool(x) for x in c)), k) for c in correct) / len(correct)
    out["n_problems"] = len(correct)
    return out


def mean_over_benchmarks(values: Sequence[float]) -> float:
    """The table's Avg column: unweighted mean over benchmarks."""
    if not values:
        raise ValueError("no benchmarks to average")
    return sum(values) / len(values)
