"""What the training loop calls as it enters a stage of a step, so a caller can act at an exact point of a
step: the kill-and-resume tests SIGKILL the trainer there (tests/trainer/kill_at.py). A normal run passes
nothing and gets `no_stage_hook`."""

from __future__ import annotations

from typing import Protocol


class StageHook(Protocol):
    def __call__(self, stage: str, step: int) -> None: ...


def no_stage_hook(stage: str, step: int) -> None:
    """The default: entering a stage does nothing more."""
