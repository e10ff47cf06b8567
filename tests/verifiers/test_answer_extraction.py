"""Final-answer extraction: PRIME's rules (last box, brace matching, text fallbacks), anti-hacking rules."""

from __future__ import annotations

import time

import pytest
from primeflow.trainer.verifiers import extract_final_answer
from primeflow.trainer.verifiers.answer_extraction import find_boxes, strip_prompt_echo


@pytest.mark.parametrize(
    "response, expected",
    [
        ("so the answer is $\\boxed{5}$.", "5"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("nested \\boxed{\\frac{\\sqrt{2}}{\\left(3\\right)}} end", "\\frac{\\sqrt{2}}{\\left(3\\right)}"),
        ("set \\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces do not close the box
        ("first \\boxed{3}\n\nthen we fix it: \\boxed{4}", "4"),  # the last box wins
        ("\\fbox{7}", "7"),
        ("\\boxed 5 is it", "5"),
        ("\\boxed {12}", "12"),
        ("\\boxed{ 42 }", "42"),
        ("The final answer is 12.", "12"),
        ("Thus the answer is: $\\frac{3}{4}$.", "\\frac{3}{4}"),
        ("ANSWER: 17", "17"),
        ("The answers are 3, 5", "3, 5"),
        ("So 9 is the answer.", "9"),
        ("Therefore $x = 14$.", "14"),
        ("lots of work\nTherefore, $a+b = \\frac{7}{2}$.", "\\frac{7}{2}"),
    ],
)
def test_extracts_final_answer(response, expected):
    assert extract_final_answer(response) == expected


@pytest.mark.parametrize(
    "response",
    [
        "",
        "I think we should compute x = 5 and then",  # truncated mid-reasoning: no final answer
        "We have x = 5 so y = 7 and z",  # '=' mid-reasoning, unfinished line
        "step 1: x = 5.\nstep 2: now we need to consider the case",  # an earlier finished line does not count
        "so the answer is \\boxed{\\frac{1}{",  # truncated inside the final box
        "first \\boxed{3} then, truncated: \\boxed{4",  # unclosed final box: no fallback to the earlier box
        "It is \\boxed{1} or \\boxed{2} or \\boxed{3}",  # candidate list in the final paragraph
        "Candidates: \\boxed{2}, \\boxed{3}.",
        "\\boxed{}",
        "The answer is",
        "x = " + "9" * 80 + ".",  # an '=' right-hand side too long to be an answer
    ],
)
def test_no_answer_when_none_is_given(response):
    assert extract_final_answer(response) is None


def test_repeated_identical_boxes_are_not_ambiguous():
    assert extract_final_answer("\\boxed{5}. Check: \\boxed{ 5 }") == "5"


def test_prompt_echo_is_ignored():
    prompt = "What is 2+3? Example: \\boxed{5}. Present the answer in LaTex format: \\boxed{Your answer}"
    echoed = prompt + "\nLet me think. 2+3 is"
    assert extract_final_answer(echoed, prompt=prompt) is None
    assert extract_final_answer(echoed + " five, so \\boxed{5}", prompt=prompt) == "5"
    chat = "<|im_start|>user\nSolve; e.g. \\boxed{9}<|im_end|>\n<|im_start|>assistant\nHmm, it is hard"
    assert extract_final_answer(chat) is None
    assert strip_prompt_echo(chat) == "\nHmm, it is hard"


def test_find_boxes_reports_unclosed():
    assert find_boxes("a \\boxed{1} b \\boxed{2") == [(2, 11, "1"), (14, 22, None)]


def test_extraction_is_linear_time_on_adversarial_text():
    # deep nesting / many boxes / many '=' must not blow up (this runs in the trainer process)
    big = "\\boxed{" * 20000 + "}" * 20000 + " = 1 " * 20000 + "x" * 200000
    t0 = time.monotonic()
    extract_final_answer(big)
    extract_final_answer("\\boxed{1}" * 20000)
    assert time.monotonic() - t0 < 5.0  # a generous bound: quadratic behaviour would take minutes


def test_rejects_non_string():
    with pytest.raises(ValueError, match="response must be a str"):
        extract_final_answer(None)  # type: ignore[arg-type]
