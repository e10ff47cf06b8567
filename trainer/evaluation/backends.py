"""Generation backends: anything with ``generate(prompts, n, temperature, top_p, max_tokens, seed)``.

The evaluation only needs text in, text out, so the real vLLM engine (``vllm_backend.VLLMBackend``) and
the scripted test backends here are interchangeable. The oracles look prompts up in a table built with the
same ``PromptBuilder`` the evaluation uses, so a wiring mistake (prompt of problem i answered with problem j's
reference) shows up as a wrong score.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, runtime_checkable

from .benchmarks import EvalRecord

# An answer chosen so that it equals no reference in the benchmark files (checked by the tests): a
# non-integer rational far from every numeric answer, with no symbolic form shared with any answer.
WRONG_ANSWER = "-\\frac{104729}{7919}"


@runtime_checkable
class GenerationBackend(Protocol):
    def generate(
        self, prompts: list[str], n: int, temperature: float, top_p: float, max_tokens: int, seed: int
    ) -> list[list[str]]:
        """``n`` completions (text, without the prompt) for each prompt, in prompt order."""
        ...


class ScriptedBackend:
    """Answers from a table ``prompt -> list of completions`` (cycled if ``n`` exceeds its length).

    A prompt not in the table is an error: the evaluation asked for something the script never built.
    """

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: list[dict] = []

    def generate(
        self, prompts: list[str], n: int, temperature: float, top_p: float, max_tokens: int, seed: int
    ) -> list[list[str]]:
        self.calls.append(
            {
                "n_prompts": len(prompts),
                "n": n,
                "temperature": temperature,
                "top_p": top_p,
                "max_tokens": max_tokens,
                "seed": seed,
            }
        )
        out = []
        for i, p in enumerate(prompts):
            if p not in self.table:
                raise KeyError(f"scripted backend: prompt {i} is not in its table: {p[:120]!r}...")
            script = self.table[p]
            out.append([script[j % len(script)] for j in range(n)])
        return out


def _table(
    records: Iterable[EvalRecord], render: Callable[[EvalRecord], str], answer: Callable[[EvalRecord], str]
) -> dict[str, list[str]]:
    table: dict[str, list[str]] = {}
    for r in records:
        if r.kind != "math":
            raise ValueError(f"{r.benchmark}/{r.id}: oracle backends need math records (code has no reference)")
        table[render(r)] = [answer(r)]
    return table


def oracle_backend(records: Sequence[EvalRecord], render: Callable[[EvalRecord], str]) -> ScriptedBackend:
    """Every completion states the reference answer in ``\\boxed{}`` (expected score: 100%)."""
    return ScriptedBackend(
        _table(records, render, lambda r: f"Working through the problem.\nThe final answer is $\\boxed{{{r.answer}}}$.")
    )


def wrong_oracle_backend(records: Sequence[EvalRecord], render: Callable[[EvalRecord], str]) -> ScriptedBackend:
    """Every completion boxes ``WRONG_ANSWER`` after mentioning the reference in passing (expected: 0%).

    The reference appears earlier in the text so that an extractor reading anything but the final box, or a
    scorer comparing the wrong strings, would score it.
    """
    return ScriptedBackend(
        _table(
            records,
            render,
            lambda r: (
                f"One might guess {r.answer}, but that is wrong.\nThe final answer is $\\boxed{{{WRONG_ANSWER}}}$."
            ),
        )
    )
