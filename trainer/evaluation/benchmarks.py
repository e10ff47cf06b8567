"""Benchmark registry and loading: name -> JSONL file under a data directory.

Files (see ../shared/data/README.md for their provenance):

- math: ``{"id": str, "problem": str, "answer": str, ...}`` one object per line (``source``/``meta`` ignored);
- code: ``{"id": str, "problem": str, "tests": {"inputs": [...], "outputs": [...], ["fn_name": str]}, ...}``.

Where the data lives (first that applies):

1. ``--data-dir D`` / ``data_dir=D``;
2. the environment variable ``PRIMEFLOW_EVAL_DATA``;
3. a ``data/`` folder next to the checkout, or the checkout's sibling ``../shared/data`` (this project's
   development layout), if present.

A benchmark's file is looked up as ``D/<category>/<file>`` (e.g. ``D/eval/math500.jsonl``) and, so that
``D`` may also point straight at a folder of JSONL files, as ``D/<file>``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_DATA_DIR = "PRIMEFLOW_EVAL_DATA"
_REPO_ROOT = Path(__file__).resolve().parents[2]  # trainer/evaluation/ -> repo root (editable installs)


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: its CLI name, column title in the table, file (relative to the data dir), kind."""

    name: str
    title: str
    relpath: str
    kind: str  # "math" (answer graded by math_score) or "code" (tests run by code_score)


# Paper order (PRIME Table 1): AIME24, AMC, MATH-500, Minerva, OlympiadBench, LeetCode (LCB is not vendored).
BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("aime24", "AIME24", "eval/aime24.jsonl", "math"),
        Benchmark("amc23", "AMC", "eval/amc23.jsonl", "math"),
        Benchmark("math500", "MATH-500", "eval/math500.jsonl", "math"),
        Benchmark("minerva", "Minerva", "eval/minerva_math.jsonl", "math"),
        Benchmark("olympiadbench", "OlympiadBench", "eval/olympiadbench.jsonl", "math"),
        Benchmark("leetcode", "LeetCode", "code/leetcode_prime.jsonl", "code"),
        Benchmark("codecontests", "CodeContests", "code/code_contests_test.jsonl", "code"),
    )
}
MATH_BENCHMARKS = tuple(n for n, b in BENCHMARKS.items() if b.kind == "math")


@dataclass(frozen=True)
class EvalRecord:
    """One problem. ``answer`` is set for math, ``tests`` for code."""

    benchmark: str
    id: str
    problem: str
    kind: str
    answer: str | None = None
    tests: dict[str, Any] | None = field(default=None, hash=False, compare=False)


class BenchmarkDataError(ValueError):
    """A benchmark file is missing or malformed (the message names the file and line)."""


def default_data_dir() -> Path | None:
    """``$PRIMEFLOW_EVAL_DATA`` if set, else ``<repo>/data`` or ``<repo>/../shared/data`` if one exists."""
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env)
    for candidate in (_REPO_ROOT / "data", _REPO_ROOT.parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return None


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """The data directory to use (see the module docstring); raises if none is given or found."""
    if data_dir is not None:
        path = Path(data_dir)
        if not path.is_dir():
            raise BenchmarkDataError(f"--data-dir {path}: not a directory")
        return path
    found = default_data_dir()
    if found is None:
        raise BenchmarkDataError(
            f"no benchmark data directory: pass --data-dir D or set {ENV_DATA_DIR}=D, where D holds "
            "eval/<benchmark>.jsonl (or the JSONL files directly)"
        )
    if not found.is_dir():
        raise BenchmarkDataError(f"{ENV_DATA_DIR}={found}: not a directory")
    return found


def parse_benchmark_names(spec: str | Sequence[str]) -> list[str]:
    """``"math500,aime24"`` (or a list) -> validated names; ``"math"`` expands to the five math benchmarks."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    out: list[str] = []
    for name in names:
        expanded = MATH_BENCHMARKS if name == "math" else (name,)
        for n in expanded:
            if n not in BENCHMARKS:
                raise ValueError(f"unknown benchmark {n!r}; allowed: {', '.join(BENCHMARKS)} (or 'math')")
            if n not in out:
                out.append(n)
    if not out:
        raise ValueError("no benchmarks given (e.g. --benchmarks math500,aime24)")
    return out


def benchmark_file(name: str, data_dir: str | Path | None = None) -> Path:
    """The JSONL file of benchmark ``name`` in the data dir; raises naming every path it tried."""
    bench = BENCHMARKS[parse_benchmark_names([name])[0]]
    root = resolve_data_dir(data_dir)
    candidates = [root / bench.relpath, root / Path(bench.relpath).name]
    for path in candidates:
        if path.is_file():
            return path
    raise BenchmarkDataError(
        f"benchmark {name!r}: file not found; looked for {' and '.join(str(p) for p in candidates)}"
    )


def _require(path: Path, lineno: int, obj: dict, key: str, types: type | tuple[type, ...]) -> Any:
    if key not in obj:
        raise BenchmarkDataError(f"{path}:{lineno}: missing field {key!r} (fields: {sorted(obj)})")
    value = obj[key]
    if not isinstance(value, types):
        raise BenchmarkDataError(f"{path}:{lineno}: field {key!r} must be {types}, got {type(value).__name__}")
    return value


def read_records(path: str | Path, benchmark: str, kind: str) -> list[EvalRecord]:
    """Parse one benchmark JSONL file; every problem is validated (blank lines are skipped)."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkDataError(f"{path}: benchmark file not found")
    records: list[EvalRecord] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise BenchmarkDataError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise BenchmarkDataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            rid = _require(path, lineno, obj, "id", str)
            problem = _require(path, lineno, obj, "problem", str)
            if rid in seen:
                raise BenchmarkDataError(f"{path}:{lineno}: duplicate id {rid!r} (first on line {seen[rid]})")
            seen[rid] = lineno
            if kind == "math":
                answer = _require(path, lineno, obj, "answer", str)
                if not answer.strip():
                    raise BenchmarkDataError(f"{path}:{lineno}: field 'answer' is empty")
                records.append(EvalRecord(benchmark, rid, problem, kind, answer=answer))
            else:
                tests = _require(path, lineno, obj, "tests", dict)
                if not isinstance(tests.get("inputs"), list) or not isinstance(tests.get("outputs"), list):
                    raise BenchmarkDataError(f"{path}:{lineno}: 'tests' needs lists 'inputs' and 'outputs'")
                records.append(EvalRecord(benchmark, rid, problem, kind, tests=tests))
    if not records:
        raise BenchmarkDataError(f"{path}: no problems in the file")
    return records


def load_benchmark(name: str, data_dir: str | Path | None = None, *, limit: int | None = None) -> list[EvalRecord]:
    """The problems of benchmark ``name`` (the first ``limit`` in file order if given)."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    bench = BENCHMARKS[parse_benchmark_names([name])[0]]
    records = read_records(benchmark_file(bench.name, data_dir), bench.name, bench.kind)
    return records[:limit] if limit is not None else records


def load_benchmarks(
    names: str | Sequence[str], data_dir: str | Path | None = None, *, limit: int | None = None
) -> list[EvalRecord]:
    """The problems of several benchmarks in order (the first ``limit`` of each): the periodic-validation
    subset, e.g. ``load_benchmarks("math500,aime24", limit=50)``."""
    return [r for name in parse_benchmark_names(names) for r in load_benchmark(name, data_dir, limit=limit)]
