"""Whether a run learned, in a few numbers: the means of its noisy per-step metrics over the first and the last
`window` steps, each beside the value that means "no signal" (prm_loss ln 2, pairwise PRM accuracy 0.5, the
localisation chance rate). The run's console prints it under the final table; bench/prm_sweep.py keeps the same
window means per swept run.

Per-step values swing by +-0.1 on the tiny run (8 prompt groups per step), so a trend is only readable as a
window mean; the windows never overlap (at most a third of the run each).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

LN2 = math.log(2.0)  # the PRM CE of a PRM that has learned nothing (every reward 0)


def finite_mean(values: Sequence[float | None]) -> float | None:
    """The mean of the finite values (a step that logged nothing, or NaN, is left out); None when none is."""
    kept = [float(v) for v in values if v is not None and math.isfinite(v)]
    return sum(kept) / len(kept) if kept else None


def window_mean(records: Sequence[Mapping[str, Any]], key: str, part: slice) -> float | None:
    """The mean of `key` over the records in `part` that logged a finite value (None when none did)."""
    return finite_mean([r.get(key) for r in records[part]])


@dataclass(frozen=True)
class LearningRow:
    """One metric's first- and last-window means, and what it would read with no learning signal."""

    label: str
    steps: str          # which steps each mean covers, e.g. "1-10 -> 51-60"
    first: float | None
    last: float | None
    no_signal: str


def summary_window(steps: int, window: int = 10) -> int:
    """Steps per window: `window`, at most a third of the run so the first and last windows are disjoint."""
    return max(1, min(window, steps // 3))


def learning_rows(records: Sequence[Mapping[str, Any]], window: int = 10) -> list[LearningRow]:
    """The rows for the metrics this run logged (a task without step labels has no localisation row, outcome-only
    RLOO no PRM rows). Empty for a run shorter than 3 steps: no two disjoint windows to compare."""
    if len(records) < 3:
        return []
    n = summary_window(len(records), window)
    first, last = slice(0, n), slice(-n, None)
    span = f"{_steps(records[first])} -> {_steps(records[last])}"

    def row(label: str, key: str, no_signal: str) -> LearningRow | None:
        a, b = window_mean(records, key, first), window_mean(records, key, last)
        return None if a is None and b is None else LearningRow(label, span, a, b, no_signal)

    def chance(part: slice) -> str:
        value = window_mean(records, "prm/localisation_chance", part)
        return "-" if value is None else f"{value:.2f}"

    rows = [
        row("outcome accuracy", "outcome_acc", "-"),
        _first_and_last("validation accuracy (avg@1)", records, "val/avg/avg@1"),
        row("PRM loss", "prm_loss", f"ln 2 = {LN2:.4f}"),
        row("PRM pairwise accuracy", "prm_acc", "0.5"),
        row("PRM localisation", "prm/localisation", f"chance {chance(first)} -> {chance(last)}"),
    ]
    return [r for r in rows if r is not None]


def _steps(records: Sequence[Mapping[str, Any]]) -> str:
    lo, hi = records[0].get("step"), records[-1].get("step")
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def _first_and_last(label: str, records: Sequence[Mapping[str, Any]], key: str) -> LearningRow | None:
    """A metric logged only on some steps (validation every train.validate_every): its first and last values."""
    logged = [r for r in records if r.get(key) is not None]
    if len(logged) < 2:
        return None
    return LearningRow(label, f"{logged[0].get('step')} -> {logged[-1].get('step')}", float(logged[0][key]),
                       float(logged[-1][key]), "-")
