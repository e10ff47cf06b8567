"""Step labels of the chain task against hand-made responses: a right response, the first step wrong, a
later step wrong (the error then propagates), an arithmetic-consistent copy error, skipped and extra steps,
unparsable text; spans cut exactly the step's text out of the response."""

from __future__ import annotations

import pytest
from primeflow.trainer.data.chain_arithmetic import ChainProblem, ChainStep, chain_response, chain_task_with_problems
from primeflow.trainer.data.chain_steps import StepLabeller, label_steps, parse_steps

P = ChainProblem(37, ("+", "+", "-", "+"), (45, 18, 6, 32))  # 82, 100, 94, 126


def _correct(text: str) -> list[bool]:
    return [s.correct for s in label_steps(P, text).steps]


def test_right_response_has_no_wrong_step():
    labels = label_steps(P, chain_response(P))
    assert [s.correct for s in labels.steps] == [True] * 4
    assert labels.first_wrong is None and labels.parsed and labels.n_reference == 4


def test_first_step_wrong():
    text = "37+45=83\n83+18=101\n101-6=95\n95+32=127\n\\boxed{127}"
    assert _correct(text) == [False, False, False, False]
    assert label_steps(P, text).first_wrong == 0


def test_later_step_wrong():
    text = "37+45=82\n82+18=100\n100-6=96\n96+32=128\n\\boxed{128}"
    assert _correct(text) == [True, True, False, False]
    assert label_steps(P, text).first_wrong == 2


def test_copy_error_is_wrong_even_when_its_arithmetic_is_right():
    text = "37+45=82\n28+18=46\n46-6=40\n40+32=72\n\\boxed{72}"
    assert label_steps(P, text).first_wrong == 1


def test_skipped_and_extra_steps():
    assert label_steps(P, "37+45=82\n82+18=100\n100+32=132\n\\boxed{132}").first_wrong == 2  # -6 skipped
    extra = chain_response(P).replace("\\boxed", "126+1=127\n\\boxed")
    assert _correct(extra) == [True] * 4 + [False]
    truncated = label_steps(P, "37+45=82\n82+18=100\n100-")  # wrong answer, but no written step is wrong
    assert truncated.first_wrong is None and len(truncated.steps) == 2


@pytest.mark.parametrize("text", ["", "\\boxed{126}", "the answer is 126", "37+45\n=", "+=+=82"])
def test_unparsable_responses_have_no_steps(text):
    labels = label_steps(P, text)
    assert not labels.parsed and labels.first_wrong is None


def test_spans_negative_values_and_spacing():
    text = "ok 5-8=-3\n-3 + 4 = 1; \\boxed{1}"
    steps = parse_steps(text)
    assert [s.step for s in steps] == [ChainStep(5, "-", 8, -3), ChainStep(-3, "+", 4, 1)]
    assert [text[s.start:s.end] for s in steps] == ["5-8=-3", "-3 + 4 = 1"]
    assert [s.correct for s in label_steps(ChainProblem(5, ("-", "+"), (8, 4)), text).steps] == [True, True]
    resp = chain_response(P)
    assert [resp[s.start:s.end] for s in parse_steps(resp)] == [s.text for s in P.steps()]


def test_labeller_looks_problems_up_by_uid():
    pairs = chain_task_with_problems(5, seed=9)
    labeller = StepLabeller(pairs)
    rec, p = pairs[3]
    assert rec.uid in labeller and labeller.label(rec.uid, chain_response(p)).first_wrong is None
    with pytest.raises(KeyError, match="chain:9:99"):
        labeller.label("chain:9:99", "1+1=2")
    with pytest.raises(TypeError):
        parse_steps(None)
