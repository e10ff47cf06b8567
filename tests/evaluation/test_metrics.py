"""avg@k and the unbiased pass@k estimator: hand-computed cases and brute force over all k-subsets."""

from __future__ import annotations

import itertools
import random
from fractions import Fraction

import pytest
from primeflow.trainer.evaluation import benchmark_metrics, default_ks, pass_at_k
from primeflow.trainer.evaluation.metrics import avg_at_k, mean_over_benchmarks


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (4, 1, 1, 0.25),  # pass@1 = c/n
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (4, 2, 2, 5 / 6),  # 1 - C(2,2)/C(4,2) = 1 - 1/6
        (16, 3, 8, 0.9),  # 1 - C(13,8)/C(16,8) = 1 - 1287/12870
        (3, 1, 3, 1.0),  # n = k with one correct: the only 3-subset contains it
        (3, 0, 3, 0.0),  # n = k, none correct
        (5, 0, 1, 0.0),  # c = 0
        (5, 0, 5, 0.0),
        (5, 5, 1, 1.0),  # c = n
        (5, 5, 5, 1.0),
        (1, 1, 1, 1.0),
        (1, 0, 1, 0.0),
        (16, 15, 2, 1.0),  # n - c < k: every pair has a correct sample
    ],
)
def test_pass_at_k_hand_cases(n, c, k, expected):
    # exact rationals in every case but 5/6, whose float has one rounding (the only tolerance needed)
    assert pass_at_k(n, c, k) == pytest.approx(expected, rel=1e-15, abs=0)


def test_pass_at_k_equals_brute_force_over_subsets(seed):
    """The probability that a uniformly drawn k-subset of the n samples holds a correct one, counted."""
    rng = random.Random(seed)
    for _ in range(40):
        n = rng.randint(1, 10)
        c = rng.randint(0, n)
        k = rng.randint(1, n)
        samples = [True] * c + [False] * (n - c)
        rng.shuffle(samples)
        subsets = list(itertools.combinations(range(n), k))
        hits = sum(any(samples[i] for i in s) for s in subsets)
        # float(Fraction) is correctly rounded; the estimator divides two exact ints once: 1 ulp apart at most
        assert pass_at_k(n, c, k) == pytest.approx(float(Fraction(hits, len(subsets))), rel=4e-16, abs=1e-16)


def test_pass_at_1_is_avg(seed):
    rng = random.Random(seed)
    for _ in range(20):
        n = rng.randint(1, 32)
        c = rng.randint(0, n)
        assert pass_at_k(n, c, 1) == pytest.approx(c / n, rel=1e-15)
        assert avg_at_k([True] * c + [False] * (n - c)) == pytest.approx(c / n, rel=1e-15)


@pytest.mark.parametrize(("n", "c", "k"), [(0, 0, 1), (4, 5, 1), (4, -1, 1), (4, 1, 0), (4, 1, 5)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError, match="need n >= 1"):
        pass_at_k(n, c, k)


def test_default_ks():
    assert default_ks(1) == [1]
    assert default_ks(16) == [1, 2, 4, 8, 16]
    assert default_ks(6) == [1, 2, 4, 6]


def test_benchmark_metrics_hand_case():
    # three problems, four samples each: c = 0, 1, 4
    correct = [[False] * 4, [False, True, False, False], [True] * 4]
    m = benchmark_metrics(correct)
    assert m["n_problems"] == 3
    assert m["avg@4"] == pytest.approx((0 + 0.25 + 1) / 3, rel=1e-15)
    assert m["pass@1"] == pytest.approx((0 + 0.25 + 1) / 3, rel=1e-15)
    assert m["pass@2"] == pytest.approx((0 + 0.5 + 1) / 3, rel=1e-15)  # 1 - C(3,2)/C(4,2) = 0.5
    assert m["pass@4"] == pytest.approx((0 + 1 + 1) / 3, rel=1e-15)
    assert set(m) == {"avg@4", "pass@1", "pass@2", "pass@4", "n_problems"}


def test_benchmark_metrics_rejects_ragged_samples():
    with pytest.raises(ValueError, match="same number"):
        benchmark_metrics([[True, False], [True]])
    with pytest.raises(ValueError, match="no problems"):
        benchmark_metrics([])
    with pytest.raises(ValueError, match="no benchmarks"):
        mean_over_benchmarks([])
