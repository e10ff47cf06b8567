"""Every MATH-500 / AIME24 / AMC23 reference answer: 1.0 against itself boxed, 0.0 against another problem's.

"Another problem's answer" is the next problem (cyclically) whose reference *string* differs, so identical
strings ("3" and "3") are skipped but differently written equal values are not. Those genuinely equal pairs
are listed in GENUINELY_EQUAL; anything else scoring 1.0 is a false positive.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from primeflow.trainer.verifiers import math_scores

DATA = Path("/work/shared/data/eval")
if not DATA.is_dir():
    DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "eval"

# (source, index of the problem, index of the other problem): values that really are equal.
GENUINELY_EQUAL = {
    ("math500", 22, 23),  # "5" vs "x=5": the same value; the issue allows "x=2" vs "2" as equal
}


def _answers(source: str) -> list[str]:
    path = DATA / f"{source}.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not found (the benchmark data lives in ../shared/data)")
    return [json.loads(line)["answer"] for line in path.read_text().splitlines() if line.strip()]


def _other(answers: list[str], i: int) -> int:
    j = (i + 1) % len(answers)
    while answers[j] == answers[i]:
        j = (j + 1) % len(answers)
    return j


@pytest.mark.slow
@pytest.mark.parametrize("source", ["math500", "aime24", "amc23"])
def test_reference_answers_against_themselves_and_others(source):
    answers = _answers(source)
    others = [_other(answers, i) for i in range(len(answers))]
    responses = [f"The final answer is $\\boxed{{{a}}}$." for a in answers]
    responses += [f"The final answer is $\\boxed{{{answers[j]}}}$." for j in others]
    scores = math_scores(responses, answers + answers, workers=2, timeout_s=10.0)
    n = len(answers)
    self_fail = [(i, answers[i]) for i in range(n) if scores[i] != 1.0]
    assert not self_fail, f"{source}: reference answers not equal to themselves: {self_fail}"
    false_pos = [
        (i, others[i], answers[i], answers[others[i]])
        for i in range(n)
        if scores[n + i] != 0.0 and (source, i, others[i]) not in GENUINELY_EQUAL
    ]
    assert not false_pos, f"{source}: different problems' answers judged equal: {false_pos}"
    listed = {(s, i, j) for s, i, j in GENUINELY_EQUAL if s == source}
    for _, i, j in listed:  # the documented exceptions must really score 1 (else the list is stale)
        assert others[i] == j and scores[n + i] == 1.0
