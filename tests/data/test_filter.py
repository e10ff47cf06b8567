"""The accuracy filter: inclusive bounds, exact on the edges whatever the float type of the scores.

Reference: exact rational arithmetic. Scores are drawn as fractions (0/1 for math, j/10 for code), the
group mean is a Fraction, the bounds are the decimal Fractions 1/5 and 4/5; the filter receives the same
scores as Python floats, float32 or float64 tensors, flat or [P, K]."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest
import torch
from primeflow.trainer.data import filter_groups, group_means


def _reference(frac_scores: list[Fraction], k: int, low: str, high: str) -> list[bool]:
    lo, hi = Fraction(low), Fraction(high)
    return [lo <= sum(frac_scores[i:i + k]) / k <= hi for i in range(0, len(frac_scores), k)]


def _forms(frac_scores: list[Fraction], k: int):
    floats = [float(s) for s in frac_scores]
    yield "list", floats
    yield "f64", torch.tensor(floats, dtype=torch.float64)
    yield "f32", torch.tensor(floats, dtype=torch.float32)
    if all(s in (0, 1) for s in frac_scores):
        yield "bf16", torch.tensor(floats, dtype=torch.bfloat16)  # 0 and 1 are exact in bf16
    yield "f32[P,K]", torch.tensor(floats, dtype=torch.float32).reshape(-1, k)


@pytest.mark.parametrize("k,kept_means", [
    (4, {Fraction(1, 4), Fraction(2, 4), Fraction(3, 4)}),       # prime_spec 6.1: K=4 keeps 0.25/0.5/0.75
    (5, {Fraction(j, 5) for j in (1, 2, 3, 4)}),                 # 1/5 and 4/5 sit exactly on the bounds
    (10, {Fraction(j, 10) for j in range(2, 9)}),                # 2/10 and 8/10 kept, 1/10 and 9/10 not
])
def test_binary_scores_every_count(k, kept_means):
    groups = [[Fraction(1)] * j + [Fraction(0)] * (k - j) for j in range(k + 1)]
    flat = [s for g in groups for s in g]
    want = [Fraction(j, k) in kept_means for j in range(k + 1)]
    assert want == _reference(flat, k, "0.2", "0.8")
    for name, scores in _forms(flat, k):
        assert filter_groups(scores, k) == want, name


def test_scores_exactly_on_bounds_as_float32():
    # every response scores 0.2 (or 0.8) as a float32: 0.2f > 0.2 and 0.8f > 0.8 in float64, still kept
    for k in (1, 3, 4, 7):
        for v in (0.2, 0.8):
            t = torch.full((2 * k,), v, dtype=torch.float32)
            assert float(t[0]) != v  # the representation error the filter must absorb
            assert filter_groups(t, k) == [True, True]
    # code-style fractions that average onto a bound: (0.1 + 0.3) / 2 = 0.2, (0.7 + 0.9) / 2 = 0.8
    assert filter_groups(torch.tensor([0.1, 0.3, 0.7, 0.9], dtype=torch.float32), 2) == [True, True]
    assert filter_groups([0.1, 0.3, 0.7, 0.9], 2) == [True, True]


def test_random_patterns_against_exact_reference(seed):
    rng = random.Random(seed)
    for _ in range(300):
        k = rng.randint(1, 12)
        p = rng.randint(1, 20)
        if rng.random() < 0.5:
            flat = [Fraction(rng.randint(0, 1)) for _ in range(p * k)]
        else:
            flat = [Fraction(rng.randint(0, 10), 10) for _ in range(p * k)]
        low, high = rng.choice([("0.2", "0.8"), ("0.25", "0.75"), ("0", "1"), ("0.5", "0.5"), ("0.3", "0.6")])
        want = _reference(flat, k, low, high)
        for name, scores in _forms(flat, k):
            assert filter_groups(scores, k, low=float(low), high=float(high)) == want, (name, k, low, high)


def test_means_are_exactly_rounded():
    assert group_means([1, 0, 0, 0, 0, 1, 1, 1, 1, 0], 5) == [0.2, 0.8]
    assert group_means(torch.tensor([0.1] * 10, dtype=torch.float64), 10) == [0.1]  # fsum: no drift
    # just outside a bound is dropped: the tolerance is far below any gap between achievable means
    assert filter_groups([0.2 - 1e-5], 1) == [False]
    assert filter_groups([0.8 + 1e-5], 1) == [False]
    assert filter_groups([1, 1, 1, 1], 4, low=0.0, high=1.0) == [True]


@pytest.mark.parametrize("args,kwargs,match", [
    (([1, 0, 1], 2), {}, "len\\(scores\\)=3 is not a multiple of group_size=2"),
    (([1, 0], 0), {}, "group_size must be an int >= 1"),
    (([1, float("nan")], 2), {}, "scores\\[1\\] \\(group 0\\) is nan"),
    ((torch.tensor([1.0, float("inf")]), 1), {}, "scores\\[1\\] \\(group 1\\) is inf"),
    ((torch.zeros(2, 3), 4), {}, "must be \\[P, group_size=4\\]"),
    ((torch.zeros(2, 2, 2), 2), {}, "must be a 1-D tensor"),
    (([1, 0], 2), {"low": 0.9, "high": 0.1}, "low <= high"),
    (([[1, 0], [0, 0]], 2), {}, "scores\\[0\\] is a list; pass a flat list"),
])
def test_bad_inputs(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        filter_groups(*args, **kwargs)
