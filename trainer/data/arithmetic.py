"""The built-in one-expression arithmetic task (issue 7, item 2; data.task=arithmetic, the embedded default until
the chain task replaced it).

Problems like ``"47+8*12="`` with exact integer answers, generated from a seed. Difficulty knobs:
``digits`` (operands drawn uniformly from 0 .. 10**digits - 1), ``ops`` (any of "+", "-", "*"; usual
precedence, * before + and -, left to right otherwise), ``n_operands`` (an int or an inclusive (lo, hi)
range) and ``allow_negative`` (False redraws problems whose answer is below 0).

Prompts are kept short on purpose: the tiny model's tokenizer is byte-level, so every character is a
token. The PRIME suffix and system prompt are options (``suffix=``, ``system_prompt=``).

``arithmetic_sft_pairs`` gives the same problems (same seed and knobs -> same problems, in order) with a
target response ending in ``\\boxed{answer}``, the form ``trainer.verifiers.math_score`` extracts; with
``show_work=True`` the response first lists each reduction step (``"8*12=96\\n47+96=143\\n\\boxed{143}"``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from .prompt_format import math_prompt_record
from .records import PromptRecord

OPS = ("+", "-", "*")
DATA_SOURCE = "arithmetic"


@dataclass(frozen=True)
class ArithmeticProblem:
    """operands[0] ops[0] operands[1] ops[1] ... ; ``answer`` is its exact value."""

    operands: tuple[int, ...]
    ops: tuple[str, ...]

    @property
    def expression(self) -> str:
        parts = [str(self.operands[0])]
        for op, x in zip(self.ops, self.operands[1:], strict=True):
            parts += [op, str(x)]
        return "".join(parts)

    def steps(self) -> list[tuple[str, int]]:
        """The evaluation as (step text, value) pairs: every product first, then the sums left to right."""
        out: list[tuple[str, int]] = []
        terms: list[int] = [self.operands[0]]   # the running products, one per +/- term
        signs: list[str] = []
        for op, x in zip(self.ops, self.operands[1:], strict=True):
            if op == "*":
                value = terms[-1] * x
                out.append((f"{terms[-1]}*{x}={value}", value))
                terms[-1] = value
            else:
                signs.append(op)
                terms.append(x)
        acc = terms[0]
        for op, x in zip(signs, terms[1:], strict=True):
            value = acc + x if op == "+" else acc - x
            out.append((f"{acc}{op}{x}={value}", value))
            acc = value
        return out

    @property
    def answer(self) -> int:
        steps = self.steps()
        return steps[-1][1] if steps else self.operands[0]


def _check_knobs(digits: int, ops: Sequence[str], n_operands: int | tuple[int, int]) -> tuple[int, int]:
    if not isinstance(digits, int) or isinstance(digits, bool) or not 1 <= digits <= 18:
        raise ValueError(f"digits must be an int in [1, 18], got {digits!r}")
    if isinstance(ops, str):
        ops = tuple(ops)
    if not ops or any(op not in OPS for op in ops):
        raise ValueError(f"ops must be a non-empty sequence of {list(OPS)}, got {ops!r}")
    if isinstance(n_operands, int) and not isinstance(n_operands, bool):
        lo = hi = n_operands
    elif isinstance(n_operands, (tuple, list)) and len(n_operands) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in n_operands):
        lo, hi = n_operands
    else:
        raise ValueError(f"n_operands must be an int or an inclusive (lo, hi) pair of ints, got {n_operands!r}")
    if not 2 <= lo <= hi:
        raise ValueError(f"n_operands must be >= 2 (and lo <= hi), got {n_operands!r}")
    return lo, hi


def arithmetic_problems(n: int, *, seed: int, digits: int = 2, ops: Sequence[str] = ("+",),
                        n_operands: int | tuple[int, int] = 2,
                        allow_negative: bool = True) -> list[ArithmeticProblem]:
    """``n`` problems drawn from ``random.Random`` seeded by ``seed`` (same arguments -> same problems)."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    if not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {type(seed).__name__}")
    lo, hi = _check_knobs(digits, ops, n_operands)
    ops = tuple(ops)
    rng = random.Random(f"primeflow-arithmetic:{seed}")
    top = 10**digits - 1
    out: list[ArithmeticProblem] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 1000 * (n + 1):
            raise ValueError(f"could not draw {n} problems with a non-negative answer from ops={ops}, "
                             f"n_operands={n_operands}; allow negative answers or change the ops")
        k = rng.randint(lo, hi)
        p = ArithmeticProblem(operands=tuple(rng.randint(0, top) for _ in range(k)),
                              ops=tuple(rng.choice(ops) for _ in range(k - 1)))
        if allow_negative or p.answer >= 0:
            out.append(p)
    return out


def _record(i: int, seed: int, p: ArithmeticProblem, template: str, suffix: bool,
            system_prompt: bool | str) -> PromptRecord:
    return math_prompt_record(f"arith:{seed}:{i}", p.expression, p.answer, template=template, suffix=suffix,
                              system_prompt=system_prompt, data_source=DATA_SOURCE)


def _check_template(template: str) -> None:
    if not isinstance(template, str) or "{expr}" not in template:
        raise ValueError(f"template must be a str containing '{{expr}}', got {template!r}")


def arithmetic_task(n: int, *, seed: int, digits: int = 2, ops: Sequence[str] = ("+",),
                    n_operands: int | tuple[int, int] = 2, allow_negative: bool = True,
                    template: str = "{expr}=", suffix: bool = False,
                    system_prompt: bool | str = False) -> list[PromptRecord]:
    """``n`` arithmetic prompts as PromptRecords (ability "math", ground truth the exact integer).

    template: the user message, with ``{expr}`` replaced by the expression (default ``"47+8="``).
    suffix: append PRIME's math instruction; system_prompt: as in ``apply_prime_suffix``.
    uids are ``"arith:<seed>:<i>"``.
    """
    _check_template(template)
    problems = arithmetic_problems(n, seed=seed, digits=digits, ops=ops, n_operands=n_operands,
                                   allow_negative=allow_negative)
    return [_record(i, seed, p, template, suffix, system_prompt) for i, p in enumerate(problems)]


def arithmetic_response(problem: ArithmeticProblem, *, show_work: bool = False) -> str:
    """The target response: ``\\boxed{answer}``, after one ``a op b=c`` line per step if show_work."""
    lines = [text for text, _ in problem.steps()] if show_work else []
    return "\n".join([*lines, f"\\boxed{{{problem.answer}}}"])


def arithmetic_sft_pairs(n: int, *, seed: int, digits: int = 2, ops: Sequence[str] = ("+",),
                         n_operands: int | tuple[int, int] = 2, allow_negative: bool = True,
                         template: str = "{expr}=", suffix: bool = False, system_prompt: bool | str = False,
                         show_work: bool = False) -> list[tuple[list[dict], str]]:
    """(messages, response_text) pairs for SFT on the same problems ``arithmetic_task`` gives for these
    arguments. The response has no end-of-turn token; the SFT encoder appends the template's one."""
    records = arithmetic_task(n, seed=seed, digits=digits, ops=ops, n_operands=n_operands,
                              allow_negative=allow_negative, template=template, suffix=suffix,
                              system_prompt=system_prompt)
    problems = arithmetic_problems(n, seed=seed, digits=digits, ops=ops, n_operands=n_operands,
                                   allow_negative=allow_negative)
    return [(rec.messages, arithmetic_response(p, show_work=show_work))
            for rec, p in zip(records, problems, strict=True)]
