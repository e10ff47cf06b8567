"""Math equivalence via the public batch API (real worker pool and math-verify), prime_spec.md §5.2."""

from __future__ import annotations

import pytest
from primeflow.trainer.verifiers import math_score, math_scores

from .math_cases import EQUAL, NOT_EQUAL  # noqa: TID252


def _boxed(ans: str) -> str:
    return f"Let me work through it.\n\nTherefore the final answer is $\\boxed{{{ans}}}$."


def test_case_table_is_large_and_balanced():
    assert len(EQUAL) + len(NOT_EQUAL) >= 150
    assert len(NOT_EQUAL) >= 50


def test_equal_pairs_score_one():
    scores = math_scores([_boxed(p) for p, _ in EQUAL], [g for _, g in EQUAL], workers=2, timeout_s=10.0)
    wrong = [(p, g) for (p, g), s in zip(EQUAL, scores, strict=True) if s != 1.0]
    assert not wrong, f"{len(wrong)} equal pairs scored 0: {wrong}"


def test_not_equal_pairs_score_zero():
    scores = math_scores([_boxed(p) for p, _ in NOT_EQUAL], [g for _, g in NOT_EQUAL], workers=2, timeout_s=10.0)
    wrong = [(p, g) for (p, g), s in zip(NOT_EQUAL, scores, strict=True) if s != 0.0]
    assert not wrong, f"{len(wrong)} different pairs scored 1: {wrong}"


@pytest.mark.parametrize(
    "response, gt, expected",
    [
        ("The answer is \\boxed{1} or \\boxed{2} or \\boxed{3}", "2", 0.0),  # candidate list
        ("The answer is one of \\boxed{1, 2, 3, 4}", "3", 0.0),
        ("We get x = 12 and then we need to check whether", "12", 0.0),  # truncated, mid-reasoning match
        ("x = 12.\nNow consider the other case, where", "12", 0.0),
        ("\\boxed{\\frac{25}{", "\\frac{25}{2}", 0.0),  # truncated inside the box
        ("final: \\boxed{12}", "12", 1.0),
        ("The final answer is 12.", "12", 1.0),  # PRIME's text fallback still works at the end
    ],
)
def test_reward_hacking_shapes(response, gt, expected):
    assert math_score(response, gt) == expected


def test_prompt_echo_box_does_not_count():
    prompt = "Compute 6*7. Present the answer in LaTex format: \\boxed{42}"
    response = prompt + "\nI am not sure how to"
    assert math_scores([response], ["42"], workers=2, timeout_s=10.0, prompts=[prompt]) == [0.0]
    assert math_scores([response + " do it: \\boxed{42}"], ["42"], workers=2, timeout_s=10.0, prompts=[prompt]) == [1.0]


def test_bad_arguments():
    with pytest.raises(ValueError, match="same length"):
        math_scores(["a"], [], workers=2, timeout_s=1.0)
    with pytest.raises(ValueError, match="ground_truth must be a str"):
        math_score("\\boxed{1}", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout_s"):
        math_scores(["a"], ["b"], workers=2, timeout_s=0)
    with pytest.raises(ValueError, match="workers"):
        math_scores(["a"], ["b"], workers=0, timeout_s=1.0)
    assert math_scores([], [], workers=2, timeout_s=1.0) == []
