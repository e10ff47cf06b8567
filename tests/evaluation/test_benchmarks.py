"""Benchmark files: data-dir resolution, and errors that name the file and line for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from primeflow.trainer.evaluation import (
    BENCHMARKS,
    ENV_DATA_DIR,
    BenchmarkDataError,
    load_benchmark,
    parse_benchmark_names,
    read_records,
    resolve_data_dir,
)


def _write(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


ROWS = [{"id": "a/0", "problem": "1+1?", "answer": "2"}, {"id": "a/1", "problem": "2+2?", "answer": "4"}]


def test_loads_nested_and_flat_layouts_and_limit(tmp_path):
    _write(tmp_path / "nested" / "eval" / "aime24.jsonl", ROWS)
    _write(tmp_path / "flat" / "aime24.jsonl", ROWS[:1])
    nested = load_benchmark("aime24", tmp_path / "nested")
    assert [(r.id, r.problem, r.answer, r.kind, r.benchmark) for r in nested] == [
        ("a/0", "1+1?", "2", "math", "aime24"),
        ("a/1", "2+2?", "4", "math", "aime24"),
    ]
    assert [r.id for r in load_benchmark("aime24", tmp_path / "flat")] == ["a/0"]
    assert [r.id for r in load_benchmark("aime24", tmp_path / "nested", limit=1)] == ["a/0"]


def test_env_var_is_the_default_data_dir(tmp_path, monkeypatch):
    _write(tmp_path / "eval" / "amc23.jsonl", ROWS)
    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    assert len(load_benchmark("amc23")) == 2


def test_missing_file_names_the_paths_tried(tmp_path):
    with pytest.raises(BenchmarkDataError) as e:
        load_benchmark("minerva", tmp_path)
    assert str(tmp_path / "eval" / "minerva_math.jsonl") in str(e.value)
    assert str(tmp_path / "minerva_math.jsonl") in str(e.value)


def test_missing_data_dir_is_an_error(tmp_path):
    with pytest.raises(BenchmarkDataError, match="not a directory"):
        resolve_data_dir(tmp_path / "nope")


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"id": "x", "problem": "p", "answer": "1"', "not valid JSON"),
        ('["id", "problem"]', "expected a JSON object"),
        ('{"id": "x", "problem": "p"}', "missing field 'answer'"),
        ('{"id": "x", "answer": "1"}', "missing field 'problem'"),
        ('{"id": 7, "problem": "p", "answer": "1"}', "field 'id' must be"),
        ('{"id": "x", "problem": "p", "answer": 3}', "field 'answer' must be"),
        ('{"id": "x", "problem": "p", "answer": "  "}', "'answer' is empty"),
        ('{"id": "a/0", "problem": "p", "answer": "1"}', "duplicate id 'a/0' \\(first on line 1\\)"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad_line, message):
    # the bad row is the 4th physical line (after a blank line), so a counter that skips blanks would say 3
    path = _write(tmp_path / "eval" / "math500.jsonl", [ROWS[0], ROWS[1], "", bad_line])
    with pytest.raises(BenchmarkDataError, match=message) as e:
        load_benchmark("math500", tmp_path)
    assert str(e.value).startswith(f"{path}:4: ")


def test_code_records_need_tests(tmp_path):
    good = {"id": "c/0", "problem": "p", "tests": {"inputs": ["1\n"], "outputs": ["1\n"]}}
    path = _write(tmp_path / "code" / "leetcode_prime.jsonl", [good, {"id": "c/1", "problem": "p", "tests": {}}])
    with pytest.raises(BenchmarkDataError, match=f"^{path}:2: 'tests' needs lists"):
        load_benchmark("leetcode", tmp_path)


def test_empty_file_is_an_error(tmp_path):
    path = _write(tmp_path / "eval" / "aime24.jsonl", [""])
    with pytest.raises(BenchmarkDataError, match=f"^{path}: no problems"):
        load_benchmark("aime24", tmp_path)


def test_benchmark_names():
    assert parse_benchmark_names("math500, aime24,math500") == ["math500", "aime24"]
    assert parse_benchmark_names("math") == [n for n, b in BENCHMARKS.items() if b.kind == "math"]
    with pytest.raises(ValueError, match="unknown benchmark 'gsm8k'; allowed: aime24"):
        parse_benchmark_names("math500,gsm8k")
    with pytest.raises(ValueError, match="no benchmarks"):
        parse_benchmark_names(" , ")


def test_read_records_missing_path_names_it(tmp_path):
    with pytest.raises(BenchmarkDataError, match=f"^{tmp_path / 'gone.jsonl'}: benchmark file not found"):
        read_records(tmp_path / "gone.jsonl", "aime24", "math")


def test_load_benchmarks_subset_in_order(tmp_path):
    _write(tmp_path / "eval" / "aime24.jsonl", ROWS)
    _write(tmp_path / "eval" / "amc23.jsonl", [{"id": "b/0", "problem": "3+3?", "answer": "6"}])
    from primeflow.trainer.evaluation import load_benchmarks

    got = load_benchmarks("amc23,aime24", tmp_path, limit=1)
    assert [(r.benchmark, r.id) for r in got] == [("amc23", "b/0"), ("aime24", "a/0")]
