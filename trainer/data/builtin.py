"""The built-in tasks behind ``data.task`` (used when ``data.train_files`` is empty): one object that gives a
task's RL prompts, its SFT pairs and (for a task with written steps) its step labeller, so the run setup,
the SFT warm-start and validation never branch on the task name themselves.

- ``arithmetic``: one expression, answer only (trainer/data/arithmetic.py); knobs in ``data.arithmetic``.
- ``chain``: chained arithmetic written step by step (trainer/data/chain_arithmetic.py); knobs in
  ``data.chain``; its responses can be labelled step by step (trainer/data/chain_steps.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .arithmetic import arithmetic_sft_pairs, arithmetic_task
from .chain_arithmetic import chain_sft_pairs, chain_task, chain_task_with_problems
from .chain_steps import StepLabeller
from .records import PromptRecord

TASKS = ("arithmetic", "chain")
_KNOBS = {
    "arithmetic": frozenset({"n", "digits", "ops", "n_operands", "allow_negative", "template"}),
    "chain": frozenset({"n", "steps", "digits", "ops", "mul_max", "allow_negative", "template"}),
}
DEFAULT_N = 2000


@dataclass(frozen=True)
class BuiltinTask:
    """A built-in task and its knobs (``n`` = the number of RL prompts; the rest go to the generator)."""

    name: str
    n: int = DEFAULT_N
    knobs: dict = field(default_factory=dict)

    def records(self, n: int, *, seed: int, suffix: bool = False,
                system_prompt: bool | str = False) -> list[PromptRecord]:
        make = chain_task if self.name == "chain" else arithmetic_task
        return make(n, seed=seed, suffix=suffix, system_prompt=system_prompt, **self.knobs)

    def sft_pairs(self, n: int, *, seed: int, suffix: bool = False,
                  system_prompt: bool | str = False) -> list[tuple[list[dict], str]]:
        """Chain targets are written step by step; arithmetic targets are the boxed answer only."""
        make = chain_sft_pairs if self.name == "chain" else arithmetic_sft_pairs
        return make(n, seed=seed, suffix=suffix, system_prompt=system_prompt, **self.knobs)

    def step_labeller(self, n: int, *, seed: int, suffix: bool = False,
                      system_prompt: bool | str = False) -> StepLabeller | None:
        """The labeller of these records' responses; None for a task without written steps."""
        if self.name != "chain":
            return None
        return StepLabeller(chain_task_with_problems(n, seed=seed, suffix=suffix, system_prompt=system_prompt,
                                                     **self.knobs))


def builtin_task(name: str, knobs: dict, *, key: str = "data") -> BuiltinTask:
    """The task ``name`` with ``knobs`` (the ``data.<name>`` mapping); unknown names or knobs raise a
    ValueError naming the config key and what is allowed."""
    if name not in TASKS:
        raise ValueError(f"{key}.task={name!r} is not a built-in task; allowed: {list(TASKS)}")
    if not isinstance(knobs, dict):
        raise ValueError(f"{key}.{name} must be a mapping of {sorted(_KNOBS[name])}, got {knobs!r}")
    unknown = sorted(set(knobs) - _KNOBS[name])
    if unknown:
        raise ValueError(f"{key}.{name}.{unknown[0]} is not a known key; allowed: {sorted(_KNOBS[name])}")
    rest = dict(knobs)
    n = rest.pop("n", DEFAULT_N)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{key}.{name}.n must be an int >= 1, got {n!r}")
    task = BuiltinTask(name, n, rest)
    try:
        task.records(1, seed=0)  # a bad knob value fails here, before any model starts
    except ValueError as error:
        raise ValueError(f"{key}.{name}: {error}") from None
    return task
