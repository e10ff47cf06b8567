"""Number formatting and markdown tables for bench/report.py (one place, so every table reads the same)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def seconds(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    if value >= 1.0:
        return f"{value:.3g} s" if value < 100 else f"{value:.0f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.3g} ms"
    return f"{value * 1e6:.3g} µs"


def nbytes(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) < 0.5:
        return "0 B"
    if abs(value) >= 2**30:
        return f"{value / 2**30:.2f} GiB"
    if abs(value) >= 2**20:
        return f"{value / 2**20:.1f} MiB"
    if abs(value) >= 2**10:
        return f"{value / 2**10:.0f} KiB"
    return f"{value:.0f} B"


def ratio(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.3g}x"


def percent(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{100 * value:.1f} %"


def rate(bytes_per_s: float | None = None, flops_per_s: float | None = None) -> str:
    """GB/s for bandwidth-bound rows, TFLOP/s (GFLOP/s below 1 TFLOP/s) for compute-bound rows."""
    if flops_per_s is not None:
        return f"{flops_per_s / 1e12:.3g} TFLOP/s" if flops_per_s >= 1e12 else f"{flops_per_s / 1e9:.3g} GFLOP/s"
    if bytes_per_s is not None:
        return f"{bytes_per_s / 1e9:.3g} GB/s"
    return "—"


def number(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub markdown table; `|` inside cells is escaped."""
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
