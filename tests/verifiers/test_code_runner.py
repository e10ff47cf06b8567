"""Code verifier on real problems from ../shared/data/code: correct solutions score 1, wrong ones their
honest fraction (recomputed here, outside the sandbox, by running the same wrong function in-process)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from primeflow.trainer.verifiers import code_score, code_scores, extract_code, verifier_counters
from primeflow.trainer.verifiers.code_runner import outputs_match

DATA = Path("/work/shared/data/code")
if not DATA.is_dir():
    DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "code"


def _problem(file: str, pid: str) -> dict:
    path = DATA / file
    if not path.exists():
        pytest.skip(f"{path} not found (the benchmark data lives in ../shared/data)")
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row["id"] == pid:
            return row
    raise AssertionError(f"{pid} not in {file}")


def _fence(code: str, prose: str = "Here is my solution.") -> str:
    return f"{prose}\n\n```python\n{textwrap.dedent(code).strip()}\n```\n"


# code_contests/test/140: count n' <= n that are squares or cubes (stdin/stdout, 138 tests)
CUBES_CORRECT = """
import sys
from math import isqrt

def iroot(n, k):
    r = int(round(n ** (1.0 / k)))
    while r ** k > n:
        r -= 1
    while (r + 1) ** k <= n:
        r += 1
    return r

def solve(data):
    nums = list(map(int, data.split()))
    return "\\n".join(str(isqrt(n) + iroot(n, 3) - iroot(n, 6)) for n in nums[1:1 + nums[0]])

print(solve(sys.stdin.read()))
"""
# forgets the numbers that are both (sixth powers): right only when n < 64
CUBES_WRONG_SRC = """
def solve(data):
    nums = list(map(int, data.split()))
    out = []
    for n in nums[1:1 + nums[0]]:
        s = int(n ** 0.5)
        while s * s > n: s -= 1
        while (s + 1) * (s + 1) <= n: s += 1
        c = int(round(n ** (1 / 3)))
        while c ** 3 > n: c -= 1
        while (c + 1) ** 3 <= n: c += 1
        out.append(str(s + c - 1 if n >= 1 else 0))
    return "\\n".join(out)
"""


def _honest_fraction(src: str, inputs: list, outputs: list, call: str) -> float:
    """Run trusted test code in-process (no sandbox) to know what score a wrong solution deserves."""
    ns: dict = {}
    exec(src, ns)  # noqa: S102 - our own test code
    passed = 0
    for inp, out in zip(inputs, outputs, strict=True):
        if call == "stdio":
            passed += ns["solve"](inp).split() == out.split()
        else:
            passed += getattr(ns["Solution"](), call)(*inp) == out
    return passed / len(inputs)


def test_stdio_correct_and_wrong_on_code_contests():
    row = _problem("code_contests_test.jsonl", "code_contests/test/140")
    tests = row["tests"]
    assert code_score(_fence(CUBES_CORRECT), tests, timeout_s=5.0) == 1.0
    wrong = CUBES_WRONG_SRC + "\nimport sys\nprint(solve(sys.stdin.read()))\n"
    expected = _honest_fraction(CUBES_WRONG_SRC, tests["inputs"][:10], tests["outputs"][:10], "stdio")
    assert 0.0 <= expected < 1.0
    assert code_score(_fence(wrong), tests, timeout_s=5.0) == pytest.approx(expected)
    # max_tests: only the first k tests are run and the score is out of k
    assert code_score(_fence(CUBES_CORRECT), tests, timeout_s=5.0, max_tests=3) == 1.0


MIN_COST_CORRECT = """
class Solution:
    def minimumCost(self, nums):
        return nums[0] + sum(sorted(nums[1:])[:2])
"""
MIN_COST_WRONG = """
class Solution:
    def minimumCost(self, nums):
        return nums[0] + nums[1] + nums[2]
"""
PUSHES_CORRECT = """
class Solution:
    def minimumPushes(self, word: str) -> int:
        return sum(i // 8 + 1 for i in range(len(word)))
"""


def test_call_based_correct_and_wrong_on_leetcode():
    cost = _problem(
        "leetcode_prime.jsonl",
        "leetcode/biweekly-contest-122-divide-an-array-into-subarrays-with-minimum-cost-i",
    )
    pushes = _problem("leetcode_prime.jsonl", "leetcode/weekly-contest-381-minimum-number-of-pushes-to-type-word-i")
    expected_wrong = _honest_fraction(
        MIN_COST_WRONG, cost["tests"]["inputs"][:10], cost["tests"]["outputs"][:10], "minimumCost"
    )
    assert 0.0 <= expected_wrong < 1.0
    scores = code_scores(
        [_fence(MIN_COST_CORRECT), _fence(MIN_COST_WRONG), _fence(PUSHES_CORRECT), _fence(MIN_COST_CORRECT)],
        [cost["tests"], cost["tests"], pushes["tests"], json.dumps(pushes["tests"])],
        workers=2,
        timeout_s=5.0,
    )
    assert scores == [1.0, pytest.approx(expected_wrong), 1.0, 0.0]  # last: solves another problem


def test_extraction_takes_the_last_python_block():
    response = "First attempt:\n```python\nprint('wrong')\n```\nBetter:\n```python\nprint(int(input()) * 2)\n```\nDone."
    assert extract_code(response).strip() == "print(int(input()) * 2)"
    assert code_score(response, {"inputs": ["21\n"], "outputs": ["42\n"]}) == 1.0
    assert extract_code("print(1)") == "print(1)"  # no fence: the whole response is code
    assert extract_code("```python\nprint(1)") == "print(1)"  # unclosed final fence
    assert extract_code("text\n```\nprint(3)\n```\n") == "print(3)\n"


@pytest.mark.parametrize(
    "got, expected, ok",
    [
        ("1 2\n3\n", "1 2\n3", True),
        ("1 2   \n3\n\n\n", "1 2\n3\n", True),
        ("1\n2\n", "1 2", True),  # token-wise, as PRIME's split comparison
        ("0.3333333", "0.33333333", True),  # floats, rel 1e-5
        ("3", "3.0", True),
        ("1 2", "1 3", False),
        ("0.33", "0.3333", False),
        ("YES", "yes", False),
        ("", "0", False),
        ("1 2 3", "1 2", False),
        ("nan", "nan", True),  # identical strings
        ("inf", "1e309", False),
    ],
)
def test_output_comparison(got, expected, ok):
    assert outputs_match(got, expected) is ok


def test_failures_score_zero_and_bad_arguments():
    tests = {"inputs": ["1\n", "2\n"], "outputs": ["1\n", "2\n"]}
    assert code_score("```python\nthis is not python\n```", tests) == 0.0
    assert code_score("```python\nimport sys\nprint(sys.stdin.read().strip())\nraise SystemExit(3)\n```", tests) == 0.0
    assert code_score("```python\nprint(input())\n```", tests) == 1.0
    assert code_score("```python\nimport sys\nprint(input()); sys.exit(0)\n```", tests) == 1.0
    call = {"fn_name": "f", "inputs": [[1]], "outputs": [[1]]}
    assert code_score("def f(x):\n    return {x}\n", call) == 0.0  # a set is not a list (not JSON either)
    assert code_score("def f(x):\n    return (x,)\n", call) == 1.0  # tuples compare as lists (PRIME)
    with pytest.raises(ValueError, match="inputs"):
        code_score("print(1)", {"inputs": ["1"]})
    with pytest.raises(ValueError, match="at least one test"):
        code_score("print(1)", {"inputs": [], "outputs": []})
    with pytest.raises(ValueError, match="timeout_s"):
        code_score("print(1)", tests, timeout_s=-1)
    with pytest.raises(ValueError, match="max_tests"):
        code_score("print(1)", tests, max_tests=0)
    with pytest.raises(ValueError, match="same length"):
        code_scores(["a"], [], workers=2)


def test_counters_cover_math_and_code():
    before = verifier_counters()
    assert {"math/timeouts", "math/crashes", "code/timeouts", "code/setup_errors", "code/tests_run"} <= set(before)
    code_score("print(input())", {"inputs": ["1\n", "2\n"], "outputs": ["1", "3"]})
    after = verifier_counters()
    assert after["code/tests_run"] == before["code/tests_run"] + 2
    assert after["code/tests_passed"] == before["code/tests_passed"] + 1
    assert after["code/programs"] == before["code/programs"] + 1
