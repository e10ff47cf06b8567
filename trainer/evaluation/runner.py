"""Generate, score and aggregate: the part of the evaluation shared by `primeflow eval` and the trainer's
periodic validation (``run_validation``).

Scoring uses the project's verifiers only (``math_scores`` for math, ``code_scores`` for code). A sample
is *correct* when its score is 1.0: for math the score is 0/1; for code it is the fraction of tests passed,
and only a program passing all of them counts (the usual pass@k definition), the raw score is kept too.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..verifiers import code_scores, extract_code, extract_final_answer, math_scores
from .backends import GenerationBackend
from .benchmarks import EvalRecord
from .metrics import benchmark_metrics, default_ks, mean_over_benchmarks


@dataclass(frozen=True)
class SamplingSettings:
    """How completions are drawn. ``samples=1, temperature=0`` is greedy pass@1 (PRIME Table 1);
    ``samples=16, temperature=0.3, top_p=0.95`` is the paper's avg@16 re-evaluation (Table 12)."""

    samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 4096
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.samples, int) or self.samples < 1:
            raise ValueError(f"samples must be an int >= 1, got {self.samples!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.temperature == 0 and self.samples > 1:
            raise ValueError(
                f"samples={self.samples} with temperature 0: greedy samples are identical; use temperature > 0 "
                "(e.g. --temperature 0.3 --top-p 0.95) or samples=1"
            )
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an int >= 1, got {self.max_tokens!r}")

    @property
    def metric(self) -> str:
        """The table's headline metric name: ``avg@n`` (== greedy pass@1 when n=1, temperature 0)."""
        return f"avg@{self.samples}"


@dataclass
class BenchmarkResult:
    benchmark: str
    metrics: dict[str, float]
    problems: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _check_completions(out: Any, n_prompts: int, n: int, what: str) -> list[list[str]]:
    if not isinstance(out, list) or len(out) != n_prompts:
        got = len(out) if isinstance(out, list) else type(out).__name__
        raise ValueError(f"{what}: backend returned {got} completion lists for {n_prompts} prompts")
    for i, comps in enumerate(out):
        if not isinstance(comps, list) or len(comps) != n or not all(isinstance(c, str) for c in comps):
            raise ValueError(f"{what}: prompt {i}: expected a list of {n} strings, got {comps!r:.200}")
    return out


def score_completions(
    records: Sequence[EvalRecord],
    prompts: Sequence[str],
    completions: Sequence[Sequence[str]],
    *,
    math_timeout_s: float = 5.0,
    workers: int = 2,
) -> list[list[float]]:
    """Verifier score of every completion (same nesting as ``completions``), batched per kind."""
    flat = [(i, j) for i, comps in enumerate(completions) for j in range(len(comps))]
    scores: list[list[float]] = [[0.0] * len(c) for c in completions]
    math_idx = [(i, j) for i, j in flat if records[i].kind == "math"]
    code_idx = [(i, j) for i, j in flat if records[i].kind == "code"]
    if math_idx:
        got = math_scores(
            [completions[i][j] for i, j in math_idx],
            [records[i].answer for i, _ in math_idx],
            prompts=[prompts[i] for i, _ in math_idx],
            workers=workers,
            timeout_s=math_timeout_s,
        )
        for (i, j), s in zip(math_idx, got, strict=True):
            scores[i][j] = s
    if code_idx:
        got = code_scores(
            [completions[i][j] for i, j in code_idx], [records[i].tests for i, _ in code_idx], workers=workers
        )
        for (i, j), s in zip(code_idx, got, strict=True):
            scores[i][j] = s
    return scores


def _extract(record: EvalRecord, completion: str, prompt: str) -> str | None:
    return extract_final_answer(completion, prompt) if record.kind == "math" else extract_code(completion)


def evaluate_records(
    backend: GenerationBackend,
    benchmark: str,
    records: Sequence[EvalRecord],
    render: Callable[[EvalRecord], str],
    settings: SamplingSettings,
    *,
    math_timeout_s: float = 5.0,
    workers: int = 2,
) -> BenchmarkResult:
    """Generate ``settings.samples`` completions per problem of one benchmark, score, aggregate."""
    if not records:
        raise ValueError(f"{benchmark}: no problems to evaluate")
    t0 = time.perf_counter()
    prompts = [render(r) for r in records]
    try:
        out = backend.generate(
            prompts, settings.samples, settings.temperature, settings.top_p, settings.max_tokens, settings.seed
        )
    except ValueError as e:  # e.g. a prompt too long for the context: say which problem it is
        m = re.search(r"prompt (\d+)", str(e))
        where = (
            f" (prompt {m.group(1)} is problem {records[int(m.group(1))].id!r})"
            if m and int(m.group(1)) < len(records)
            else ""
        )
        raise ValueError(f"{benchmark}: {e}{where}") from e
    completions = _check_completions(out, len(prompts), settings.samples, benchmark)
    t1 = time.perf_counter()
    scores = score_completions(records, prompts, completions, math_timeout_s=math_timeout_s, workers=workers)
    t2 = time.perf_counter()
    correct = [[s >= 1.0 for s in row] for row in scores]
    problems = [
        {
            "id": r.id,
            "prompt": p,
            "reference": r.answer,
            "completions": comps,
            "extracted": [_extract(r, c, p) for c in comps],
            "scores": row,
            "correct": ok,
        }
        for r, p, comps, row, ok in zip(records, prompts, completions, scores, correct, strict=True)
    ]
    metrics = benchmark_metrics(correct, default_ks(settings.samples))
    return BenchmarkResult(benchmark, metrics, problems, {"generate": t1 - t0, "score": t2 - t1})


def group_by_benchmark(records: Sequence[EvalRecord]) -> dict[str, list[EvalRecord]]:
    groups: dict[str, list[EvalRecord]] = {}
    for r in records:
        groups.setdefault(r.benchmark, []).append(r)
    return groups


def summary_metrics(results: Sequence[BenchmarkResult], metric: str) -> float:
    """The Avg column: the unweighted mean of ``metric`` over the benchmarks."""
    return mean_over_benchmarks([r.metrics[metric] for r in results])


def run_validation(
    backend: GenerationBackend,
    records: Sequence[EvalRecord],
    *,
    render: Callable[[EvalRecord], str],
    samples: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_tokens: int = 1024,
    seed: int = 0,
    prefix: str = "val",
    math_timeout_s: float = 5.0,
) -> dict[str, float]:
    """Evaluate ``records`` (any mix of benchmarks) and return flat metrics for the run's log.

    Keys: ``{prefix}/{benchmark}/avg@{samples}``, ``{prefix}/{benchmark}/pass@{k}`` (k = 1, 2, 4, ..., samples),
    ``{prefix}/avg/avg@{samples}`` (unweighted mean over benchmarks), ``{prefix}/time/generate`` and
    ``{prefix}/time/score`` (seconds). Values are fractions in [0, 1]. ``render`` is usually
    ``PromptBuilder(tokenizer)``; pick the subset with ``load_benchmark(name, limit=N)``.
    """
    settings = SamplingSettings(samples, temperature, top_p, max_tokens, seed)
    results = [
        evaluate_records(backend, name, recs, render, settings, math_timeout_s=math_timeout_s)
        for name, recs in group_by_benchmark(records).items()
    ]
    out: dict[str, float] = {}
    for res in results:
        for key, value in res.metrics.items():
            if key != "n_problems":
                out[f"{prefix}/{res.benchmark}/{key}"] = float(value)
    out[f"{prefix}/avg/{settings.metric}"] = summary_metrics(results, settings.metric)
    out[f"{prefix}/time/generate"] = sum(r.seconds["generate"] for r in results)
    out[f"{prefix}/time/score"] = sum(r.seconds["score"] for r in results)
    return out
