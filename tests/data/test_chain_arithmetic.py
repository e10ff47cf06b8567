"""The chained-arithmetic task: the expression's usual-precedence value (Python's own evaluation) equals the
left-to-right chain, every knob of the difficulty dial is respected, the same seed gives the same problems,
bad knobs fail naming themselves, and with the real verifier the SFT responses score 1 and a wrong final
answer 0 (the outcome label is the final answer only)."""

from __future__ import annotations

import random
import re

import pytest
from primeflow.trainer.data.builtin import builtin_task
from primeflow.trainer.data.chain_arithmetic import (
    ChainProblem,
    chain_problems,
    chain_response,
    chain_sft_pairs,
    chain_task,
    chain_task_with_problems,
)
from primeflow.trainer.verifiers import math_score

EXPR = re.compile(r"^[\d+\-*()]+$")


def _python_value(expr: str) -> int:
    assert EXPR.match(expr), expr  # only digits, operators and parentheses reach eval
    return eval(expr, {"__builtins__": {}}, {})


def test_expression_value_is_the_left_to_right_chain(seed):
    rng = random.Random(seed)
    for _ in range(20):
        ops = tuple(rng.sample(["+", "-", "*"], rng.randint(1, 3)))
        lo = rng.randint(1, 4)
        for p in chain_problems(30, seed=rng.randrange(10**6), steps=(lo, lo + 2), digits=rng.randint(1, 3),
                                ops=ops, allow_negative=True):
            acc = p.start
            for s, op, x in zip(p.steps(), p.ops, p.operands, strict=True):
                assert (s.left, s.op, s.right) == (acc, op, x)
                acc = {"+": acc + x, "-": acc - x, "*": acc * x}[op]
                assert s.result == acc
            assert p.answer == acc == _python_value(p.expression)


def test_hand_made_expressions():
    assert ChainProblem(37, ("+", "+", "-"), (45, 18, 6)).expression == "37+45+18-6"
    assert ChainProblem(37, ("+", "*"), (45, 3)).expression == "(37+45)*3"
    assert ChainProblem(37, ("*", "+", "*"), (3, 5, 2)).expression == "(37*3+5)*2"
    assert ChainProblem(7, ("*", "*"), (3, 2)).expression == "7*3*2"
    assert chain_response(ChainProblem(37, ("+", "+"), (45, 18))) == "37+45=82\n82+18=100\n\\boxed{100}"


def test_knobs_respected():
    ps = chain_problems(300, seed=1, steps=(2, 5), digits=3, ops=["+", "-", "*"], mul_max=4)
    assert {len(p.ops) for p in ps} == {2, 3, 4, 5}
    for p in ps:
        assert 0 <= p.start <= 999
        for op, x in zip(p.ops, p.operands, strict=True):
            assert (2 <= x <= 4) if op == "*" else (0 <= x <= 999)
        assert all(s.result >= 0 for s in p.steps())  # allow_negative=False by default
    assert {len(p.ops) for p in chain_problems(50, seed=1, steps=4)} == {4}
    assert any(s.result < 0 for p in chain_problems(200, seed=2, ops=["-"], allow_negative=True) for s in p.steps())


def test_same_seed_same_problems_and_records_match_problems():
    assert chain_problems(40, seed=5) == chain_problems(40, seed=5)
    assert chain_problems(40, seed=5) != chain_problems(40, seed=6)
    pairs = chain_task_with_problems(10, seed=3)
    assert [r for r, _ in pairs] == chain_task(10, seed=3)
    for i, (rec, p) in enumerate(pairs):
        assert rec.uid == f"chain:3:{i}"
        assert rec.ground_truth == str(p.answer)
        assert rec.messages == [{"role": "user", "content": p.expression + "="}]


@pytest.mark.parametrize("bad", [dict(steps=0), dict(steps=(3, 2)), dict(steps="3"), dict(digits=0),
                                 dict(ops=["/"]), dict(ops="+"), dict(mul_max=1), dict(template="no expr")])
def test_bad_knobs_fail_clearly(bad):
    with pytest.raises(ValueError):
        chain_task(3, seed=0, **bad)


def test_builtin_task_names_the_bad_key():
    with pytest.raises(ValueError, match=r"data\.chain\.n_operands is not a known key"):
        builtin_task("chain", {"n_operands": 2})
    with pytest.raises(ValueError, match=r"data\.chain: digits must be"):
        builtin_task("chain", {"digits": 0})
    with pytest.raises(ValueError, match=r"data\.task='sorting' is not a built-in task"):
        builtin_task("sorting", {})
    task = builtin_task("chain", {"n": 7, "steps": 2})
    assert (task.n, task.knobs) == (7, {"steps": 2})
    assert builtin_task("arithmetic", {"n": 3}).step_labeller(3, seed=0) is None


def test_sft_responses_score_one_and_wrong_answers_zero():
    for (messages, response), rec in zip(chain_sft_pairs(30, seed=4, ops=["+", "-", "*"]),
                                         chain_task(30, seed=4, ops=["+", "-", "*"]), strict=True):
        assert messages == rec.messages
        assert math_score(response, rec.ground_truth) == 1.0
        wrong = response.replace(f"\\boxed{{{rec.ground_truth}}}", f"\\boxed{{{int(rec.ground_truth) + 1}}}")
        assert math_score(wrong, rec.ground_truth) == 0.0
