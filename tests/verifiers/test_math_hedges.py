"""Issue 19 (math): answers that are not one value score 0, a final self-correction scores its final answer,
true hedges stay ambiguous, and `math_score` works from a script without an `if __name__ == "__main__":`
guard. Everything goes through the public API: real extraction, real math-verify, real worker pool."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from primeflow.trainer.verifiers import extract_final_answer, math_scores

# Each of these was scored 1.0 by an earlier checker (issue 19): a claim, a wrong sum, a near miss of an
# integer, and three hedges between two values.
MALFORMED = [
    ("\\boxed{7=3}", "3"),
    ("\\boxed{2+2=5}", "5"),
    ("\\boxed{1000050.5}", "1000000"),
    ("\\boxed{3 \\text{ (or maybe 4)}}", "3"),
    ("\\boxed{3 \\approx 4}", "3"),
    ("\\boxed{3 \\lor 4}", "4"),
]

# The same shapes written correctly keep scoring 1 (no false negatives from the malformed-answer rules).
WELL_FORMED = [
    ("\\boxed{x=3}", "3"),
    ("\\boxed{1000000}", "1000000"),
    ("\\boxed{1{,}000{,}000}", "1000000"),
    ("\\boxed{3 \\text{ cm}}", "3"),
    ("\\boxed{\\frac{1}{2}}", "0.5"),
    ("\\boxed{2.0}", "2"),
]

SELF_CORRECTION = "So the sum is \\boxed{7}. Hmm, \\boxed{7} is wrong, let me redo. Final: \\boxed{8}"
CORRECTIONS = [
    SELF_CORRECTION,
    "That gives \\boxed{7}. Wait, that is incorrect: I dropped a carry. The answer is \\boxed{8}.",
    "First try: \\boxed{7}. Actually, I made a mistake; correcting it gives \\boxed{8}.",
]
HEDGES = [
    "It is \\boxed{7} or \\boxed{8}.",
    "Either \\boxed{7}, \\boxed{8}.",
    "I get \\boxed{7}, but it might also be \\boxed{8}.",
]


def _score(pairs: list[tuple[str, str]]) -> list[float]:
    return math_scores(
        [f"Working.\n\nThe answer is ${r}$." for r, _ in pairs], [g for _, g in pairs], workers=2, timeout_s=10.0
    )


def test_malformed_answers_score_zero():
    scores = _score(MALFORMED)
    assert scores == [0.0] * len(MALFORMED), list(zip(MALFORMED, scores, strict=True))


def test_well_formed_answers_of_the_same_shapes_score_one():
    scores = _score(WELL_FORMED)
    assert scores == [1.0] * len(WELL_FORMED), list(zip(WELL_FORMED, scores, strict=True))


@pytest.mark.parametrize("response", CORRECTIONS)
def test_a_final_self_correction_is_the_answer(response):
    assert extract_final_answer(response) == "8"
    assert math_scores([response, response], ["8", "7"], workers=2, timeout_s=10.0) == [1.0, 0.0]


@pytest.mark.parametrize("response", HEDGES)
def test_two_different_boxes_without_a_correction_stay_ambiguous(response):
    assert extract_final_answer(response) is None
    assert math_scores([response, response], ["7", "8"], workers=2, timeout_s=10.0) == [0.0, 0.0]


def test_a_correction_must_retract_every_other_box():
    # the retraction after 7 says nothing about 6: still a candidate list
    response = "\\boxed{6} or \\boxed{7}. No, \\boxed{7} is wrong. Final: \\boxed{8}"
    assert extract_final_answer(response) is None


_SCRIPT = """
from primeflow.trainer.verifiers import math_score
print("score", math_score("\\\\boxed{8}", "8"), math_score("\\\\boxed{7}", "8"))
"""


@pytest.mark.parametrize("guarded", [False, True])
def test_math_score_works_from_a_script_with_or_without_a_main_guard(tmp_path, guarded):
    body = _SCRIPT if not guarded else "if __name__ == '__main__':\n" + textwrap.indent(_SCRIPT, "    ")
    script = tmp_path / "score_it.py"
    script.write_text(body)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    # the script body ran once: workers do not re-run the caller's main module
    assert run.stdout.split("\n").count("score 1.0 0.0") == 1, run.stdout
    assert "bootstrapping" not in run.stderr
