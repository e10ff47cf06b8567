"""Rank-0 console output of a run: a rich progress bar per stage, one summary line per step, a final table.

On every other rank (and with enabled=False) every method does nothing, so the loop calls them
unconditionally. Output goes to a rich Console (stdout by default); without a terminal (CI, log files) there are no
progress bars, only the step lines and the table.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

# (metric key, column / summary label, format) for the per-step line and the final table.
SUMMARY_KEYS: tuple[tuple[str, str, str], ...] = (
    ("outcome_acc", "acc", "{:.3f}"),
    ("filter_kept_frac", "kept", "{:.2f}"),
    ("prm_loss", "prm_loss", "{:.4f}"),
    ("prm_acc", "prm_acc", "{:.3f}"),
    ("pg_loss", "pg_loss", "{:+.4f}"),
    ("pg_clipfrac", "clip", "{:.3f}"),
    ("logprob_mismatch", "lp_mis", "{:.2e}"),
    ("prm/localisation", "loc", "{:.2f}"),  # a task with step labels only (data.task=chain)
    ("response_len", "len", "{:.1f}"),
    ("tokens_per_s", "tok/s", "{:.0f}"),
)


def _rank() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return spec.format(value)



def step_seconds(metrics: Mapping[str, Any]) -> float | None:
    """A step's wall time: `time/step` (the whole step, measured once), else the sum of its stage times
    (`time/<stage>`; records without `time/step`). Never both: `time/step` already contains the stages."""
    if metrics.get("time/step") is not None:
        return float(metrics["time/step"])
    stages = [v for k, v in metrics.items() if k.startswith("time/") and v is not None]
    return float(sum(stages)) if stages else None

class _Bar:
    """Handle of one stage's progress bar: `advance(n)`, `update(total=...)`."""

    def __init__(self, progress=None, task=None):
        self._progress, self._task = progress, task

    def advance(self, n: float = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def update(self, **kwargs) -> None:
        if self._progress is not None:
            self._progress.update(self._task, **kwargs)


class RunConsole:
    """Console output for one run; silent unless this is rank 0 (or `enabled` says otherwise)."""

    def __init__(self, *, total_steps: int | None = None, enabled: bool | None = None, console=None):
        self.enabled = _rank() == 0 if enabled is None else enabled
        self.total_steps = total_steps
        self._console = None
        if self.enabled:
            from rich.console import Console

            # Not a terminal (a log file, CI): rich would assume 80 columns and elide the final table's cells.
            self._console = console or Console(width=None if sys.stdout.isatty() else 160)

    @contextmanager
    def stage(self, name: str, total: float | None = None) -> Iterator[_Bar]:
        """A progress bar for one stage (`total` units, e.g. prompts or micro-batches); removed when done."""
        if not self.enabled or not self._console.is_terminal:  # no live bars in log files / CI output
            yield _Bar()
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        # A stage that counts nothing it could show (no total) gets a spinner and its time: a bar and a count
        # would read `0/?` until it ends.
        counted = (BarColumn(), MofNCompleteColumn()) if total is not None else (SpinnerColumn(),)
        with Progress(TextColumn("[bold]{task.description}"), *counted, TimeElapsedColumn(),
                      console=self._console, transient=True) as progress:
            yield _Bar(progress, progress.add_task(name, total=total))

    def print(self, message: str) -> None:
        if self.enabled:
            self._console.print(message, highlight=False, markup=False, soft_wrap=True)
            self._console.file.flush()  # a step line must show up in `| tee` / log files as it happens

    def step_line(self, step: int, metrics: Mapping[str, Any]) -> str:
        """The one-line summary of a step (also what `step_summary` prints)."""
        total = f"/{self.total_steps}" if self.total_steps is not None else ""
        parts = [f"step {step}{total}"]
        parts += [f"{label} {_fmt(metrics[key], spec)}" for key, label, spec in SUMMARY_KEYS if key in metrics]
        seconds = step_seconds(metrics)
        if seconds is not None:
            parts.append(f"{seconds:.1f}s")
        return " | ".join(parts)

    def step_summary(self, step: int, metrics: Mapping[str, Any]) -> None:
        self.print(self.step_line(step, metrics))

    def final_table(self, records: Sequence[Mapping[str, Any]], *, title: str = "PRIME run summary") -> None:
        """A table of the key metrics per step (records as logged / as read from metrics.jsonl). When its columns
        are wider than the console, they are split over several tables, each led by the step column, so that no
        number is cut (rich would shrink the columns and elide every cell at 80 columns)."""
        if not self.enabled or not records:
            return
        from rich.table import Table

        present = [(k, label, spec) for k, label, spec in SUMMARY_KEYS if any(k in r for r in records)]
        labels = [label for _, label, _ in present] + ["time (s)"]
        rows = []
        for r in records:
            seconds = step_seconds(r)
            rows.append([_fmt(r.get(k), spec) for k, _, spec in present]
                        + [f"{seconds:.1f}" if seconds is not None else "-"])
        steps = [str(r["step"]) for r in records]
        widths = [max(len(label), *(len(row[i]) for row in rows)) for i, label in enumerate(labels)]
        parts = column_parts(max(len("step"), *map(len, steps)), widths, self._console.width)
        for n, part in enumerate(parts, 1):
            table = Table(title=title if len(parts) == 1 else f"{title} ({n}/{len(parts)})")
            table.add_column("step", justify="right", no_wrap=True)
            for i in part:
                table.add_column(labels[i], justify="right", no_wrap=True)
            for step, row in zip(steps, rows, strict=True):
                table.add_row(step, *[row[i] for i in part])
            self._console.print(table)

    def learning_table(self, records: Sequence[Mapping[str, Any]], *, window: int = 10) -> None:
        """Whether the run learned: first- vs last-window means of the noisy metrics, each beside its no-signal
        value (learning_summary.py). Nothing for a run too short to have two disjoint windows."""
        from .learning_summary import learning_rows

        rows = learning_rows(records, window)
        if not self.enabled or not rows:
            return
        from rich.table import Table

        table = Table(title="Did it learn? (window means)")
        for name in ("metric", "steps", "first", "last", "no signal"):
            table.add_column(name, justify="left" if name in ("metric", "steps", "no signal") else "right",
                             no_wrap=True)
        for r in rows:
            table.add_row(r.label, r.steps, _fmt(r.first, "{:.3f}"), _fmt(r.last, "{:.3f}"), r.no_signal)
        self._console.print(table)


def column_parts(step_width: int, widths: Sequence[int], available: int) -> list[list[int]]:
    """Split columns of `widths` characters into consecutive groups whose tables, each with a step column of
    `step_width`, fit `available` characters. A rich table (default box, padding 1) takes 1 character for its
    left edge and width + 3 per column (padding both sides, a border)."""
    base = 1 + step_width + 3
    parts: list[list[int]] = [[]]
    used = base
    for i, width in enumerate(widths):
        if parts[-1] and used + width + 3 > available:
            parts.append([])
            used = base
        parts[-1].append(i)
        used += width + 3
    return parts
