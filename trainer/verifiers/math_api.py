"""Public math verifier: ``math_score`` and the batch ``math_scores`` over a persistent hard-timeout pool.

The pool is created on first use and reused by every later call (the trainer scores a batch per step);
``close_math_pool()`` stops it (also registered with atexit). Timeouts, worker crashes and task errors are
counted in ``math_counters()`` for the trainer's metrics; each of them scores 0.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Sequence

from .pool import HardTimeoutPool, PoolCounters

DEFAULT_TIMEOUT_S = 5.0  # per sample; PRIME's sympy calls use ~1 s each, a sample makes a few
DEFAULT_WORKERS = 2
_TASK = "primeflow.trainer.verifiers.math_task:score_response"


class _PoolHolder:
    """The process-wide math pool (a holder object instead of a rebound global)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pool: HardTimeoutPool | None = None
        self.counters = PoolCounters()  # survives pool re-creation

    def get(self, workers: int) -> HardTimeoutPool:
        with self.lock:
            if self.pool is not None and self.pool.workers != workers:
                self.pool.close()
                self.pool = None
            if self.pool is None:
                self.pool = HardTimeoutPool(func_path=_TASK, workers=workers, counters=self.counters)
            return self.pool

    def close(self) -> None:
        with self.lock:
            if self.pool is not None:
                self.pool.close()
                self.pool = None


_HOLDER = _PoolHolder()
atexit.register(_HOLDER.close)


def _check_str(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a str, got {type(value).__name__}")


def math_scores(
    responses: Sequence[str],
    ground_truths: Sequence[str],
    *,
    workers: int = DEFAULT_WORKERS,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    prompts: Sequence[str | None] | None = None,
) -> list[float]:
    """Score each response against its ground truth (1.0 / 0.0), in parallel, each under a hard time limit.

    ``prompts`` (optional, same length): the prompt of each sample, so that a box echoed from the prompt does
    not count. A sample that times out, crashes its worker or fails to parse scores 0.0.
    """
    if len(responses) != len(ground_truths):
        raise ValueError(
            f"responses and ground_truths must have the same length, got {len(responses)} and {len(ground_truths)}"
        )
    if prompts is not None and len(prompts) != len(responses):
        raise ValueError(f"prompts must have one entry per response ({len(responses)}), got {len(prompts)}")
    for i, (r, g) in enumerate(zip(responses, ground_truths, strict=True)):
        _check_str(f"responses[{i}]", r)
        _check_str(f"ground_truths[{i}]", g)
    if not responses:
        return []
    pool = _HOLDER.get(workers)
    ps = list(prompts) if prompts is not None else [None] * len(responses)
    args = [(r, g, p) for r, g, p in zip(responses, ground_truths, ps, strict=True)]
    return [float(x) for x in pool.map(args, timeout_s=timeout_s, default=0.0)]


def math_score(
    response: str, ground_truth: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, prompt: str | None = None
) -> float:
    """1.0 if the final answer of ``response`` equals ``ground_truth`` (math-verify + PRIME normalisation),
    else 0.0.

    Runs in the shared worker pool under a hard ``timeout_s`` (a hang scores 0 and is counted).
    """
    _check_str("response", response)
    _check_str("ground_truth", ground_truth)
    workers = _HOLDER.pool.workers if _HOLDER.pool is not None else DEFAULT_WORKERS
    return math_scores([response], [ground_truth], workers=workers, timeout_s=timeout_s, prompts=[prompt])[0]


def math_counters() -> dict[str, int]:
    """Cumulative counts since start: ``math/tasks``, ``math/timeouts``, ``math/crashes``, ``math/errors``,
    ``math/respawns``."""
    return _HOLDER.counters.as_dict("math/")


def close_math_pool() -> None:
    """Kill the math worker processes (a later call starts a new pool)."""
    _HOLDER.close()
