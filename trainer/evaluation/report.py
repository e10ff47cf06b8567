"""Outputs of an evaluation: the paper-shaped markdown table, the summary JSON, per-problem JSON files.

Table (PRIME Table 1 layout): one row per model, benchmarks as columns in the order asked for, then Avg (the
unweighted mean over the benchmarks of the headline metric), values in percent with one decimal.
Every file is written atomically (temp file, fsync, rename), so an interrupted run never leaves a
half-written result that looks complete.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .benchmarks import BENCHMARKS
from .metrics import mean_over_benchmarks
from .runner import BenchmarkResult, SamplingSettings


@dataclass
class ModelResult:
    """All benchmark results of one model (one table row)."""

    label: str
    path: str | None
    step: int | None
    results: list[BenchmarkResult] = field(default_factory=list)
    context_length: int | None = None  # None: no model (oracle backends)
    long_prompts: dict[str, list[str]] = field(default_factory=dict)  # benchmark -> ids over the context

    def metric(self, benchmark: str, name: str) -> float:
        for r in self.results:
            if r.benchmark == benchmark:
                return r.metrics[name]
        raise KeyError(f"{self.label}: no result for benchmark {benchmark!r}")

    def average(self, name: str) -> float:
        return mean_over_benchmarks([r.metrics[name] for r in self.results])


@dataclass(frozen=True)
class RunInfo:
    """The settings besides sampling that change scores, recorded with them (results.md and JSON)."""

    system_prompt: str = "prime"
    long_prompts: str = "skip"  # the --long-prompts policy
    max_tokens_rule: str = "--max-tokens"  # where max_tokens came from


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file in the same directory, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def _pct(x: float) -> str:
    return f"{100.0 * x:.1f}"


def describe_metric(settings: SamplingSettings) -> str:
    if settings.samples == 1 and settings.temperature == 0:
        return "pass@1, greedy"
    return f"avg@{settings.samples}, temperature {settings.temperature:g}, top_p {settings.top_p:g}"


def markdown_table(models: Sequence[ModelResult], benchmarks: Sequence[str], settings: SamplingSettings) -> str:
    """The paper-shaped table, preceded by one line saying what the numbers are."""
    metric = settings.metric
    counts = (
        ", ".join(f"{BENCHMARKS[b].title} {int(models[0].metric(b, 'n_problems'))}" for b in benchmarks)
        if models
        else ""
    )
    head = ["Model", "Step", *(BENCHMARKS[b].title for b in benchmarks), "Avg"]
    lines = [
        f"Accuracy (%), {describe_metric(settings)}, max_tokens {settings.max_tokens}, seed {settings.seed}. "
        f"Problems: {counts}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for m in models:
        cells = [m.label, "-" if m.step is None else str(m.step)]
        cells += [_pct(m.metric(b, metric)) for b in benchmarks]
        cells.append(_pct(m.average(metric)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _long_prompt_counts(m: ModelResult, benchmarks: Sequence[str]) -> str:
    counts = [f"{BENCHMARKS[b].title} {len(m.long_prompts[b])}" for b in benchmarks if m.long_prompts.get(b)]
    return ", ".join(counts) or "none"


def settings_section(
    models: Sequence[ModelResult], benchmarks: Sequence[str], settings: SamplingSettings, info: RunInfo
) -> str:
    """What results.md records under the table: every setting that changes the scores."""
    skip_note = " (not generated, not scored: averages are over the rest)" if info.long_prompts == "skip" else ""
    lines = [
        "Settings that change the scores:",
        "",
        f"- system prompt: {info.system_prompt}",
        f"- sampling: samples {settings.samples}, temperature {settings.temperature:g}, top_p {settings.top_p:g}, "
        f"seed {settings.seed}",
        f"- max_tokens {settings.max_tokens} ({info.max_tokens_rule})",
        f"- prompts longer than context - max_tokens: {info.long_prompts}{skip_note}",
    ]
    for m in models:
        context = "-" if m.context_length is None else str(m.context_length)
        lines.append(f"- {m.label}: context {context}, long prompts ({info.long_prompts}): "
                     f"{_long_prompt_counts(m, benchmarks)}")
    return "\n".join(lines) + "\n"


def results_markdown(
    models: Sequence[ModelResult], benchmarks: Sequence[str], settings: SamplingSettings, info: RunInfo
) -> str:
    """results.md: the table, then the settings section."""
    return markdown_table(models, benchmarks, settings) + "\n" + settings_section(models, benchmarks, settings, info)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def check_writable(out_dir: str | Path) -> Path:
    """Prove that `out_dir` can be created and written, before anything is generated: an unwritable --out
    found after the benchmarks ran would lose every result. Probes the directory, or its nearest existing
    ancestor, with a temporary file it removes again (nothing is left behind). ValueError names the
    directory and why."""
    out = Path(out_dir)
    probe_dir = out
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    try:
        if not probe_dir.is_dir():
            raise NotADirectoryError(f"{probe_dir} is a file")
        fd, probe = tempfile.mkstemp(prefix=".primeflow-write-test-", dir=probe_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise ValueError(f"--out {out}: cannot write there ({error.strerror or error}); choose a writable "
                         "directory") from None
    return out


def _long_prompt_record(m: ModelResult, benchmark: str, info: RunInfo) -> dict[str, Any]:
    ids = m.long_prompts.get(benchmark, [])
    return {"policy": info.long_prompts, "count": len(ids), "ids": ids}


def write_outputs(
    out_dir: str | Path,
    models: Sequence[ModelResult],
    benchmarks: Sequence[str],
    settings: SamplingSettings,
    extra: dict[str, Any] | None = None,
    info: RunInfo | None = None,
) -> dict[str, Path]:
    """Write ``results.md``, ``results.json`` and ``<model>/<benchmark>.json``; return their paths."""
    out = Path(out_dir)
    info = info or RunInfo()
    table = results_markdown(models, benchmarks, settings, info)
    paths = {"table": out / "results.md", "summary": out / "results.json"}
    atomic_write_text(paths["table"], table)
    used: set[str] = set()
    summary_models = []
    for m in models:
        key = _safe(m.label if m.step is None else f"{m.label}_step{m.step}")
        base, i = key, 1
        while key in used:
            i += 1
            key = f"{base}_{i}"
        used.add(key)
        for r in m.results:
            p = out / key / f"{r.benchmark}.json"
            atomic_write_json(
                p,
                {
                    "model": m.label,
                    "model_path": m.path,
                    "step": m.step,
                    "settings": settings.__dict__,
                    "system_prompt": info.system_prompt,
                    "context_length": m.context_length,
                    "long_prompts": _long_prompt_record(m, r.benchmark, info),
                    **r.to_json(),
                },
            )
            paths[f"{key}/{r.benchmark}"] = p
        summary_models.append(
            {
                "label": m.label,
                "path": m.path,
                "step": m.step,
                "problems_dir": key,
                "context_length": m.context_length,
                "long_prompts": {
                    b: {"count": len(ids), "ids": ids} for b, ids in m.long_prompts.items() if b in benchmarks
                },
                "metrics": {r.benchmark: r.metrics for r in m.results},
                "avg": {settings.metric: m.average(settings.metric)},
                "seconds": {r.benchmark: r.seconds for r in m.results},
            }
        )
    atomic_write_json(
        paths["summary"],
        {
            "settings": settings.__dict__,
            "system_prompt": info.system_prompt,
            "long_prompts": info.long_prompts,
            "max_tokens_rule": info.max_tokens_rule,
            "metric": settings.metric,
            "benchmarks": list(benchmarks),
            "models": summary_models,
            **(extra or {}),
        },
    )
    return paths
