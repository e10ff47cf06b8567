"""The synthetic arithmetic task: exact answers (checked against Python's own evaluation of the expression
string), determinism per seed, every difficulty knob, short prompts, and -- with the real verifier -- the
SFT responses score 1.0 while wrong ones score 0.0."""

from __future__ import annotations

import random
import re

import pytest
from primeflow.trainer.data import (
    MATH_SUFFIX,
    PRIME_SYSTEM_PROMPT,
    arithmetic_problems,
    arithmetic_sft_pairs,
    arithmetic_task,
)

EXPR = re.compile(r"^-?\d+([+\-*]\d+)+$")  # a work line may start from a negative partial result


def _python_value(expr: str) -> int:
    assert EXPR.match(expr), expr  # only digits and operators reach eval
    return eval(expr, {"__builtins__": {}}, {})  # independent reference: Python's precedence rules


def _random_knobs(rng: random.Random) -> dict:
    ops = tuple(rng.sample(["+", "-", "*"], rng.randint(1, 3)))
    lo = rng.randint(2, 4)
    return dict(digits=rng.randint(1, 4), ops=ops, n_operands=(lo, lo + rng.randint(0, 2)),
                allow_negative=rng.random() < 0.5)


def test_answers_exact_and_knobs_respected(seed):
    rng = random.Random(seed)
    for _ in range(20):
        knobs = _random_knobs(rng)
        recs = arithmetic_task(50, seed=rng.randrange(10**6), **knobs)
        assert len(recs) == 50
        for rec in recs:
            (msg,) = rec.messages
            assert msg["role"] == "user" and msg["content"].endswith("=")
            expr = msg["content"][:-1]
            value = _python_value(expr)
            assert rec.ground_truth == str(value)
            assert rec.ability == "math" and rec.data_source == "arithmetic"
            operands = [int(x) for x in re.split(r"[+\-*]", expr)]
            lo, hi = knobs["n_operands"]
            assert lo <= len(operands) <= hi
            assert all(0 <= x < 10 ** knobs["digits"] for x in operands)
            assert set(re.findall(r"[+\-*]", expr)) <= set(knobs["ops"])
            if not knobs["allow_negative"]:
                assert value >= 0


def test_precedence_cases():
    # hand-checked: the evaluator must do * before + and -, and - left to right
    from primeflow.trainer.data import ArithmeticProblem

    cases = {((2, 3, 4), ("+", "*")): 14, ((10, 3, 2), ("-", "-")): 5, ((2, 3, 4, 5), ("*", "+", "*")): 26,
             ((7, 2, 3), ("-", "*")): 1, ((0, 9), ("*",)): 0, ((5, 6), ("-",)): -1}
    for (operands, ops), want in cases.items():
        p = ArithmeticProblem(operands=operands, ops=ops)
        assert p.answer == want == _python_value(p.expression)


def test_deterministic_per_seed_and_distinct_across_seeds(seed):
    a = arithmetic_task(100, seed=seed, ops=("+", "*"))
    assert a == arithmetic_task(100, seed=seed, ops=("+", "*"))
    b = arithmetic_task(100, seed=seed + 1, ops=("+", "*"))
    assert [r.messages for r in a] != [r.messages for r in b]
    assert len({r.uid for r in a + b}) == 200
    # the first n problems do not depend on how many are asked for
    assert arithmetic_task(30, seed=seed, ops=("+", "*")) == a[:30]


def test_difficulty_spreads_values(seed):
    # operands are uniform over 0..10**digits-1: every digit count shows up in a large sample
    probs = arithmetic_problems(2000, seed=seed, digits=2)
    firsts = {p.operands[0] for p in probs}
    assert min(firsts) < 10 and max(firsts) > 89 and len(firsts) > 90


def test_prompts_are_short_and_options_add_suffix_and_system():
    rec = arithmetic_task(1, seed=0)[0]
    assert len(rec.messages[0]["content"]) <= 6  # "99+99=": every char is a token for the tiny model
    with_suffix = arithmetic_task(1, seed=0, suffix=True)[0]
    assert with_suffix.messages[0]["content"] == rec.messages[0]["content"] + "\n\n" + MATH_SUFFIX
    sys_only = arithmetic_task(1, seed=0, system_prompt=True)[0]
    assert sys_only.messages == [{"role": "system", "content": PRIME_SYSTEM_PROMPT}, rec.messages[0]]
    t = arithmetic_task(1, seed=0, template="What is {expr}?")[0]
    assert t.messages[0]["content"] == f"What is {rec.messages[0]['content'][:-1]}?"


def test_sft_pairs_match_task_and_end_with_boxed(seed):
    recs = arithmetic_task(40, seed=seed, ops=("+", "-", "*"), n_operands=(2, 4))
    for show_work in (False, True):
        pairs = arithmetic_sft_pairs(40, seed=seed, ops=("+", "-", "*"), n_operands=(2, 4), show_work=show_work)
        for rec, (messages, response) in zip(recs, pairs, strict=True):
            assert messages == rec.messages
            assert response.endswith(f"\\boxed{{{rec.ground_truth}}}")
            if show_work:
                # every work line is a true equation, and the last one gives the answer
                *lines, last = response.split("\n")
                for line in lines:
                    lhs, rhs = line.split("=")
                    assert _python_value(lhs) == int(rhs)
                assert lines and lines[-1].split("=")[1] == rec.ground_truth
            else:
                assert response == f"\\boxed{{{rec.ground_truth}}}"


@pytest.mark.parametrize("kwargs,match", [
    (dict(digits=0), "digits must be an int in"), (dict(digits=2.0), "digits must be an int in"),
    (dict(ops=("/",)), "ops must be a non-empty sequence"), (dict(ops=()), "ops must be a non-empty sequence"),
    (dict(n_operands=1), "n_operands must be >= 2"), (dict(n_operands=(3, 2)), "lo <= hi"),
    (dict(n_operands="3"), "n_operands must be an int or"), (dict(template="no placeholder"), "template must"),
    (dict(ops=("-",), n_operands=12, digits=1, allow_negative=False), "could not draw"),
])
def test_bad_knobs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        arithmetic_task(5, seed=0, **kwargs)


def test_real_verifier_scores_right_answers_1_and_wrong_0(seed):
    """trainer.verifiers.math_scores (the real verifier, worker pool) on the task's own targets."""
    from primeflow.trainer.verifiers import math_scores

    rng = random.Random(seed)
    responses, truths, want = [], [], []
    for k in range(6):
        knobs = _random_knobs(rng)
        s = rng.randrange(10**6)
        recs = arithmetic_task(8, seed=s, **knobs)
        pairs = arithmetic_sft_pairs(8, seed=s, show_work=k % 2 == 1, **knobs)
        for rec, (_, resp) in zip(recs, pairs, strict=True):
            responses.append(resp)
            truths.append(rec.ground_truth)
            want.append(1.0)
            # wrong: off by one (the verifier's x100 / /100 tolerance cannot make these equal)
            wrong = int(rec.ground_truth) + rng.choice([-1, 1])
            responses.append(resp.rsplit("\\boxed", 1)[0] + f"\\boxed{{{wrong}}}")
            truths.append(rec.ground_truth)
            want.append(0.0)
    # and no boxed answer at all (truncated mid-way) scores 0
    responses.append("12+")
    truths.append("12")
    want.append(0.0)
    got = math_scores(responses, truths)
    bad = [(r, t, g) for r, t, g, w in zip(responses, truths, got, want, strict=True) if g != w]
    assert not bad, bad[:5]
