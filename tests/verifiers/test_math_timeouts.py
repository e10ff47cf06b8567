"""Hard time limits and crash survival of the math verifier's worker pool (spec §5.2, landscape §5)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from primeflow.trainer.verifiers import math_counters, math_scores
from primeflow.trainer.verifiers.pool import HardTimeoutPool

# sympy evaluates the power tower as a Python integer: a C-level computation that SIGALRM cannot interrupt.
HANG = "Finally, $\\boxed{9^{9^{9^{9}}}}$."


def test_sympy_hang_returns_zero_within_the_limit():
    math_scores(["\\boxed{1}"], ["1"], workers=2, timeout_s=5.0)  # pool warm
    before = math_counters()["math/timeouts"]
    t0 = time.monotonic()
    scores = math_scores([HANG, "\\boxed{2}", HANG, "\\boxed{3}"], ["1", "2", "1", "3"], workers=2, timeout_s=2.0)
    elapsed = time.monotonic() - t0
    assert scores == [0.0, 1.0, 0.0, 1.0]
    # two hangs on two workers run concurrently: about one timeout plus respawn, far below a hang
    assert elapsed < 2.0 * 2 + 5.0, elapsed
    assert math_counters()["math/timeouts"] == before + 2
    # the pool is healthy afterwards
    assert math_scores(["\\boxed{\\frac12}"] * 4, ["0.5"] * 4, workers=2, timeout_s=5.0) == [1.0] * 4


def test_pool_survives_a_worker_being_killed():
    math_scores(["\\boxed{1}"], ["1"], workers=2, timeout_s=5.0)
    from primeflow.trainer.verifiers.math_api import _HOLDER

    pids = _HOLDER.pool.worker_pids()
    before = math_counters()["math/crashes"]
    # kill the workers while they are stuck in the hang
    killer = threading.Timer(0.8, lambda: [os.kill(p, signal.SIGKILL) for p in pids])
    killer.start()
    scores = math_scores([HANG, HANG], ["1", "1"], workers=2, timeout_s=20.0)
    killer.join()
    assert scores == [0.0, 0.0]
    assert math_counters()["math/crashes"] == before + 2
    assert math_scores(["\\boxed{7}", "\\boxed{8}"], ["7", "9"], workers=2, timeout_s=5.0) == [1.0, 0.0]


def test_generic_pool_timeout_crash_error_and_order():
    # stdlib task functions, so the test needs no importable helper module
    pool = HardTimeoutPool(func_path="time:sleep", workers=2, mem_limit_bytes=None)
    try:
        t0 = time.monotonic()
        assert pool.map([(0.0,), (30.0,), (0.0,), ("bad",)], timeout_s=1.0, default="D") == [
            None,
            "D",
            None,
            "D",
        ]
        assert time.monotonic() - t0 < 10.0
        assert pool.counters.timeouts == 1 and pool.counters.errors == 1
    finally:
        pool.close()
    crash = HardTimeoutPool(func_path="os:_exit", workers=1, mem_limit_bytes=None)
    try:
        assert crash.map([(1,), (2,)], timeout_s=5.0, default=-1) == [-1, -1]
        assert crash.counters.crashes == 2
    finally:
        crash.close()
    ordered = HardTimeoutPool(func_path="operator:mul", workers=2, mem_limit_bytes=None)
    try:
        assert ordered.map([(i, i) for i in range(50)], timeout_s=5.0, default=None) == [i * i for i in range(50)]
        pids = ordered.worker_pids()
    finally:
        ordered.close()
    for pid in pids:  # close() reaped the workers
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
