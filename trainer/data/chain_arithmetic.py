"""The built-in multi-step task (issue 18, item 1): chained arithmetic written step by step.

A problem is a start value and a chain of operations applied left to right, e.g. 37, +45, +18, -6. The
prompt is the expression (``"37+45+18-6="``; parenthesised where usual precedence would differ from left to
right, ``"(37+45)*3="``) and the target response writes every intermediate result on its own line::

    37+45=82
    82+18=100
    100-6=94
    \\boxed{94}

The verifier's outcome label is the final answer only (``\\boxed{94}`` against ground truth ``"94"``, the
same ``math_score`` as every math prompt). Because the task knows every intermediate value, each written
step can also be labelled right or wrong (trainer/data/chain_steps.py); those labels are for measurement
(does the implicit PRM put its lowest reward on the first wrong step?), never for training.

Difficulty dial: ``steps`` (operations per problem, an int or an inclusive (lo, hi) range), ``digits``
(the start value and the + / - operands are drawn from 0 .. 10**digits - 1), ``ops`` (any of "+", "-", "*";
a * operand is drawn from 2 .. ``mul_max`` so that values stay short for a byte-level tokenizer) and
``allow_negative`` (False redraws problems with any intermediate value below 0).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from .prompt_format import math_prompt_record
from .records import PromptRecord

OPS = ("+", "-", "*")
DATA_SOURCE = "chain_arithmetic"
UID_PREFIX = "chain"


@dataclass(frozen=True)
class ChainStep:
    """One written step ``left op right = result``."""

    left: int
    op: str
    right: int
    result: int

    @property
    def text(self) -> str:
        return f"{self.left}{self.op}{self.right}={self.result}"


def apply_op(left: int, op: str, right: int) -> int:
    if op == "+":
        return left + right
    if op == "-":
        return left - right
    if op == "*":
        return left * right
    raise ValueError(f"unknown operation {op!r}; allowed: {list(OPS)}")


@dataclass(frozen=True)
class ChainProblem:
    """``start`` then ``ops[i] operands[i]`` applied left to right; ``answer`` is the last step's result."""

    start: int
    ops: tuple[str, ...]
    operands: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.ops) != len(self.operands) or not self.ops:
            raise ValueError(f"a chain needs one operand per operation and at least one step, got ops={self.ops} "
                             f"operands={self.operands}")

    def steps(self) -> list[ChainStep]:
        out, acc = [], self.start
        for op, x in zip(self.ops, self.operands, strict=True):
            value = apply_op(acc, op, x)
            out.append(ChainStep(acc, op, x, value))
            acc = value
        return out

    @property
    def answer(self) -> int:
        return self.steps()[-1].result

    @property
    def expression(self) -> str:
        """The chain as an expression whose usual precedence gives the left-to-right value: the prefix is
        parenthesised before a * only when it has a top-level + or - (``(37+45)*3``, but ``37*3+5``)."""
        text, has_sum = str(self.start), False
        for op, x in zip(self.ops, self.operands, strict=True):
            if op == "*" and has_sum:
                text, has_sum = f"({text})", False
            text += f"{op}{x}"
            has_sum = has_sum or op in "+-"
        return text


def _check_knobs(steps: int | Sequence[int], digits: int, ops: Sequence[str], mul_max: int) -> tuple[int, int]:
    if not isinstance(digits, int) or isinstance(digits, bool) or not 1 <= digits <= 18:
        raise ValueError(f"digits must be an int in [1, 18], got {digits!r}")
    if isinstance(ops, str) or not ops or any(op not in OPS for op in ops):
        raise ValueError(f"ops must be a non-empty list of {list(OPS)}, got {ops!r}")
    if not isinstance(mul_max, int) or isinstance(mul_max, bool) or mul_max < 2:
        raise ValueError(f"mul_max must be an int >= 2, got {mul_max!r}")
    if isinstance(steps, int) and not isinstance(steps, bool):
        lo = hi = steps
    elif isinstance(steps, (tuple, list)) and len(steps) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in steps):
        lo, hi = steps
    else:
        raise ValueError(f"steps must be an int or an inclusive (lo, hi) pair of ints, got {steps!r}")
    if not 1 <= lo <= hi:
        raise ValueError(f"steps must be >= 1 (and lo <= hi), got {steps!r}")
    return lo, hi


def chain_problems(n: int, *, seed: int, steps: int | Sequence[int] = 3, digits: int = 2,
                   ops: Sequence[str] = ("+", "-"), mul_max: int = 9,
                   allow_negative: bool = False) -> list[ChainProblem]:
    """``n`` problems from ``random.Random`` seeded by ``seed`` (same arguments -> same problems, in order)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    if not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {type(seed).__name__}")
    lo, hi = _check_knobs(steps, digits, ops, mul_max)
    ops = tuple(ops)
    rng = random.Random(f"primeflow-chain-arithmetic:{seed}")
    top = 10**digits - 1
    out: list[ChainProblem] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 1000 * (n + 1):
            raise ValueError(f"could not draw {n} chains with non-negative intermediate values from ops={ops}; "
                             f"set allow_negative or change the ops")
        k = rng.randint(lo, hi)
        chosen = tuple(rng.choice(ops) for _ in range(k))
        operands = tuple(rng.randint(2, mul_max) if op == "*" else rng.randint(0, top) for op in chosen)
        p = ChainProblem(start=rng.randint(0, top), ops=chosen, operands=operands)
        if allow_negative or all(s.result >= 0 for s in p.steps()):
            out.append(p)
    return out


def chain_response(problem: ChainProblem) -> str:
    """The target response: one ``a op b=c`` line per step, then ``\\boxed{answer}``."""
    return "\n".join([*(s.text for s in problem.steps()), f"\\boxed{{{problem.answer}}}"])


def _record(i: int, seed: int, p: ChainProblem, template: str, suffix: bool,
            system_prompt: bool | str) -> PromptRecord:
    return math_prompt_record(f"{UID_PREFIX}:{seed}:{i}", p.expression, p.answer, template=template, suffix=suffix,
                              system_prompt=system_prompt, data_source=DATA_SOURCE)


def chain_task_with_problems(n: int, *, seed: int, template: str = "{expr}=", suffix: bool = False,
                             system_prompt: bool | str = False,
                             **knobs) -> list[tuple[PromptRecord, ChainProblem]]:
    """(record, problem) pairs: the records are what the trainer samples from, the problems are what the
    step labeller checks each written step against. uids are ``"chain:<seed>:<i>"``."""
    if not isinstance(template, str) or "{expr}" not in template:
        raise ValueError(f"template must be a str containing '{{expr}}', got {template!r}")
    problems = chain_problems(n, seed=seed, **knobs)
    return [(_record(i, seed, p, template, suffix, system_prompt), p) for i, p in enumerate(problems)]


def chain_task(n: int, *, seed: int, **kwargs) -> list[PromptRecord]:
    """``n`` chained-arithmetic prompts (ability "math", ground truth the exact final value)."""
    return [rec for rec, _ in chain_task_with_problems(n, seed=seed, **kwargs)]


def chain_sft_pairs(n: int, *, seed: int, **kwargs) -> list[tuple[list[dict], str]]:
    """(messages, response_text) pairs for SFT on the problems ``chain_task`` gives for these arguments, the
    response written step by step (no end-of-turn token; the SFT encoder appends the template's one)."""
    return [(rec.messages, chain_response(p)) for rec, p in chain_task_with_problems(n, seed=seed, **kwargs)]
