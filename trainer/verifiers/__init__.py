"""Outcome verifiers for PRIME: math answer equivalence and sandboxed code tests (prime_spec.md §5).

- ``math_score(response, ground_truth) -> float``: 1.0 if the response's final answer (last complete
  ``\\boxed{}``, else a final "answer is"/"=" line) equals the reference under PRIME's normalisations and
  math-verify, else 0.0. ``math_scores(...)`` scores a batch over a persistent pool of killable worker
  processes with a hard per-sample time limit.
- ``code_score(response, tests, *, timeout_s=5.0, max_tests=10) -> float``: fraction of the first
  ``max_tests`` APPS-style tests the response's last ```python block passes, run in a sandbox
  (see ``sandbox.py``). ``code_scores(...)`` runs a batch concurrently.
- ``verifier_counters()``: cumulative timeouts / crashes / errors for the trainer's metrics.

Nothing heavy is imported here: math-verify and sympy load only in the math worker processes.
"""

from __future__ import annotations

from .answer_extraction import extract_final_answer
from .code_extraction import extract_code
from .code_runner import close_code_runner, code_counters, code_score, code_scores
from .math_api import close_math_pool, math_counters, math_score, math_scores
from .sandbox import SandboxLimits, sandbox_status


def verifier_counters() -> dict[str, int]:
    """All verifier counters (``math/*`` and ``code/*``), cumulative since process start."""
    return {**math_counters(), **code_counters()}


def close_verifiers() -> None:
    """Stop the math worker pool and the code runner threads (both restart on next use)."""
    close_math_pool()
    close_code_runner()


__all__ = [
    "SandboxLimits",
    "close_verifiers",
    "code_counters",
    "code_score",
    "code_scores",
    "extract_code",
    "extract_final_answer",
    "math_counters",
    "math_score",
    "math_scores",
    "sandbox_status",
    "verifier_counters",
]
