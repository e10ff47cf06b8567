"""Step labels of the chained-arithmetic task: find each written step ``a op b=c`` in a response and whether
it is right (issue 18, item 1). Used for measurement only (error localisation, trainer/stages/localisation.py);
the training signal stays the outcome label.

A written step is *right* when it states exactly the reference step at its position: the true running value
as left operand, the problem's operation and operand, and the true result. So an arithmetic slip, a copy
error of the running value, a skipped or an extra step all make that step wrong, and the *first wrong step*
is where the response first leaves the reference solution. A response whose written steps are all right
has no first wrong step (it may still be wrong: truncated, or a boxed answer that disagrees); neither has a
response with no step at all (unparsable). Those are left out of localisation rather than guessed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .chain_arithmetic import ChainProblem, ChainStep
from .records import PromptRecord

# left operand may be negative (a running value below 0); the lookbehind keeps "-" after a digit an operator
_STEP = re.compile(r"(?<!\d)(-?\d+)\s*([+\-*])\s*(\d+)\s*=\s*(-?\d+)")


@dataclass(frozen=True)
class WrittenStep:
    """A step found in a response: its values and its character span ``[start, end)`` in the text."""

    step: ChainStep
    start: int
    end: int
    correct: bool = False


@dataclass(frozen=True)
class StepLabels:
    """The labelled steps of one response, in order, and the index of the first wrong one (None: every
    written step is right, or no step was written)."""

    steps: tuple[WrittenStep, ...]
    n_reference: int

    @property
    def first_wrong(self) -> int | None:
        return next((i for i, s in enumerate(self.steps) if not s.correct), None)

    @property
    def parsed(self) -> bool:
        return bool(self.steps)


def parse_steps(text: str) -> list[WrittenStep]:
    """Every ``a op b=c`` in `text`, left to right (unlabelled)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return [WrittenStep(ChainStep(int(m[1]), m[2], int(m[3]), int(m[4])), m.start(), m.end())
            for m in _STEP.finditer(text)]


def label_steps(problem: ChainProblem, text: str) -> StepLabels:
    """The steps written in `text`, each marked right iff it equals the reference step at its position."""
    reference = problem.steps()
    written = parse_steps(text)
    labelled = tuple(WrittenStep(w.step, w.start, w.end, correct=i < len(reference) and w.step == reference[i])
                     for i, w in enumerate(written))
    return StepLabels(labelled, len(reference))


class StepLabeller:
    """Labels responses by prompt uid (the trainer knows which prompt a response answers, not its problem)."""

    def __init__(self, pairs: Iterable[tuple[PromptRecord, ChainProblem]]) -> None:
        self._problems = {rec.uid: p for rec, p in pairs}

    def __contains__(self, uid: str) -> bool:
        return uid in self._problems

    def label(self, uid: str, text: str) -> StepLabels:
        if uid not in self._problems:
            raise KeyError(f"no chained-arithmetic problem has uid {uid!r}")
        return label_steps(self._problems[uid], text)
