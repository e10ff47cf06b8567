"""The unit of math work run inside a pool worker: extract the final answer, then test equivalence.

Importing this module imports math-verify and sympy (about 1 s): the pool's forkserver preloads it once, so
workers forked after a timeout start instantly.
"""

from __future__ import annotations

import math_verify  # noqa: F401  (preloaded on purpose, see the module docstring)
import sympy  # noqa: F401

from .answer_extraction import extract_final_answer
from .math_equivalence import answers_equivalent, quiet_math_verify_logs

quiet_math_verify_logs()


def _warm_up() -> None:
    """First use of the LaTeX parser costs ~1 s (ANTLR set-up, sympy caches). Doing it at import means the
    forkserver pays it once and every forked worker, including replacements after a timeout, starts warm:
    otherwise a fresh worker could spend most of its first task's time limit on set-up."""
    for pred, gt in (("\\frac{14}{3}", "p-q"), ("3\\sqrt{13}", "(3, \\frac{\\pi}{2})"), ("x^2+1", "[1,2)")):
        answers_equivalent(pred, gt)


_warm_up()


def score_response(response: str, ground_truth: str, prompt: str | None = None) -> float:
    """1.0 if the final answer equals ``ground_truth``, else 0.0 (no time limit: run it in a worker)."""
    answer = extract_final_answer(response, prompt)
    return 1.0 if answers_equivalent(answer, ground_truth) else 0.0


def answers_match(answer: str, ground_truth: str) -> float:
    """Equivalence of two bare answers (no extraction), as a 0/1 score."""
    return 1.0 if answers_equivalent(answer, ground_truth) else 0.0
