"""Code benchmarks through the sandboxed code verifier: PRIME's code prompt, the raw fraction-of-tests score
kept per sample, and only all-tests-passed samples counting as correct. Plus: the real code files parse."""

from __future__ import annotations

import json

import pytest
from primeflow.trainer.evaluation import (
    BENCHMARKS,
    BenchmarkDataError,
    PromptBuilder,
    SamplingSettings,
    ScriptedBackend,
    evaluate_records,
    load_benchmark,
    resolve_data_dir,
)

ADD_TESTS = {"fn_name": "add", "inputs": [[1, 2], [0, 5], [3, 4], [10, -1]], "outputs": [3, 5, 7, 9]}
STDIN_TESTS = {"inputs": ["1 2\n", "0 5\n", "3 4\n", "10 -1\n"], "outputs": ["3\n", "5\n", "7\n", "9\n"]}
CALL_SAMPLES = [
    "```python\nclass Solution:\n    def add(self, a, b):\n        return a + b\n```",
    # wrong only when a == 0: passes 3 of the 4 tests
    "```python\nclass Solution:\n    def add(self, a, b):\n        return a + b if a else -1\n```",
    "```python\nclass Solution:\n    def add(self, a, b) return a + b\n```",  # syntax error
]
STDIN_SAMPLES = [
    "```python\na, b = map(int, input().split())\nprint(a + b)\n```",
    "```python\na, b = map(int, input().split())\nprint(a + b if a else -1)\n```",
    "I cannot solve this.",  # no fence: the whole text is run as code and fails
]


@pytest.mark.parametrize(
    ("name", "tests", "samples"),
    [("leetcode", ADD_TESTS, CALL_SAMPLES), ("codecontests", STDIN_TESTS, STDIN_SAMPLES)],
)
def test_code_scores_and_correctness(tmp_path, name, tests, samples):
    path = tmp_path / BENCHMARKS[name].relpath
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"id": f"{name}/0", "problem": "Add two integers.", "tests": tests}) + "\n")
    (record,) = load_benchmark(name, tmp_path)
    render = PromptBuilder(None, "none")
    prompt = render(record)
    assert prompt == (
        "<|im_start|>user\nAdd two integers.\n\nWrite Python code to solve the problem. Present the code in \n"
        "```python\nYour code\n```\nat the end.<|im_end|>\n<|im_start|>assistant\n"
    )
    backend = ScriptedBackend({prompt: samples})
    settings = SamplingSettings(samples=3, temperature=0.7, top_p=0.95, max_tokens=128)
    res = evaluate_records(backend, name, [record], render, settings)
    (p,) = res.problems
    assert p["scores"] == [1.0, 0.75, 0.0]  # fractions of 4 tests: exact in binary
    assert p["correct"] == [True, False, False]
    assert p["reference"] is None and p["extracted"][0].startswith(("class Solution", "a, b"))
    # c = 1 of n = 3: avg@3 = 1/3, pass@2 = 1 - C(2,2)/C(3,2) = 2/3, pass@3 = 1
    assert res.metrics == pytest.approx(
        {"avg@3": 1 / 3, "pass@1": 1 / 3, "pass@2": 2 / 3, "pass@3": 1.0, "n_problems": 1}, rel=1e-12
    )


@pytest.mark.parametrize("name", [n for n, b in BENCHMARKS.items() if b.kind == "code"])
def test_real_code_files_parse(name):
    try:
        data_dir = resolve_data_dir(None)
    except BenchmarkDataError as e:
        pytest.skip(f"benchmark data not found ({e})")
    records = load_benchmark(name, data_dir)
    n_lines = sum(1 for line in (data_dir / BENCHMARKS[name].relpath).read_text().splitlines() if line.strip())
    assert len(records) == n_lines
    assert all(r.kind == "code" and r.tests["inputs"] and r.answer is None for r in records)
