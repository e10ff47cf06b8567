"""PNG figures for bench/report.py (matplotlib, Agg backend: no display needed). Every function returns
True when it wrote its file, False when there was nothing to plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"primeflow": "tab:green", "fused": "tab:green", "eager": "tab:red", "unfused": "tab:red",
          "compile": "tab:orange", "reference": "tab:gray", "liger": "tab:blue", "prime": "tab:green",
          "rloo": "tab:blue"}


def _save(fig, path: Path) -> bool:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def scaling_figure(sweeps: dict[str, dict[tuple[int, int], dict[str, dict]]], title: str, path: Path,
                   beyond_gradients: bool) -> bool:
    """2 x 2: peak extra memory and time against N (N sweep) and V (V sweep), log-log, one line per
    provider, plus the size of one fp32 [N, V] tensor for scale; time as wall and (dashed) process CPU
    seconds, the latter summed over threads and steadier on a loaded machine."""
    if not any(sweeps.values()):
        return False
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5))
    for col, (sweep, axis) in enumerate((("N", 0), ("V", 1))):
        cells = sweeps.get(sweep) or {}
        keys = sorted(cells)
        if not keys:
            axes[0][col].set_visible(False)
            axes[1][col].set_visible(False)
            continue
        xs_all = [k[axis] for k in keys]
        for provider in ("eager", "primeflow"):
            pts = [(k[axis], cells[k][provider]) for k in keys if provider in cells[k]]
            if not pts:
                continue
            xs = [x for x, _ in pts]
            mem = [max(p.get("peak_extra_beyond_gradients", p.get("peak_extra_bytes", 0)), 1) / 2**20
                   for _, p in pts]
            axes[0][col].plot(xs, mem, "o-", color=COLORS.get(provider), label=provider)
            axes[1][col].plot(xs, [p["seconds"] for _, p in pts], "o-", color=COLORS.get(provider),
                              label=f"{provider} wall")
            if all("cpu_seconds" in p for _, p in pts):
                axes[1][col].plot(xs, [p["cpu_seconds"] for _, p in pts], "x--", color=COLORS.get(provider),
                                  alpha=0.7, label=f"{provider} process CPU")
        axes[0][col].plot(xs_all, [k[0] * k[1] * 4 / 2**20 for k in keys], "--", color="black", alpha=0.5,
                          label="one fp32 [N,V]")
        fixed = f"V={keys[0][1]}" if sweep == "N" else f"N={keys[0][0]}"
        what = "peak extra memory beyond grads (MiB)" if beyond_gradients else "peak extra memory (MiB)"
        for row, ylabel in ((0, what), (1, "seconds")):
            ax = axes[row][col]
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(f"{sweep} ({fixed})")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def kernel_figure(cases: list[str], providers: list[str], seconds: dict[tuple[str, str], float],
                  peaks: dict[tuple[str, str], int], title: str, path: Path) -> bool:
    """Grouped horizontal bars: time (log) and peak extra memory per case and provider."""
    if not cases or not providers or not seconds:
        return False
    height = max(3.0, 0.45 * len(cases) * max(1, len(providers)) ** 0.5 + 1.5)
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, height))
    width = 0.8 / len(providers)
    for i, provider in enumerate(providers):
        ys = [c + (i - (len(providers) - 1) / 2) * width for c in range(len(cases))]
        ax_t.barh(ys, [seconds.get((case, provider), 0) for case in cases], height=width,
                  color=COLORS.get(provider), label=provider)
        ax_m.barh(ys, [peaks.get((case, provider), 0) / 2**20 for case in cases], height=width,
                  color=COLORS.get(provider), label=provider)
    for ax, xlabel in ((ax_t, "time (s, log)"), (ax_m, "peak extra memory (MiB)")):
        ax.set_yticks(range(len(cases)))
        ax.set_yticklabels([c[:48] for c in cases], fontsize=7)
        ax.set_xlabel(xlabel)
        ax.grid(True, axis="x", alpha=0.3)
        ax.invert_yaxis()
    ax_t.set_xscale("log")
    ax_m.set_yticklabels([])
    ax_t.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def stage_figure(stages: list[str], modes: dict[str, dict[str, float]], title: str, path: Path) -> bool:
    """Stacked bar per mode: seconds per stage."""
    if not stages or not modes:
        return False
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.8 * len(modes)))
    names = list(modes)
    left = [0.0] * len(names)
    cmap = plt.get_cmap("tab10")
    for i, stage in enumerate(stages):
        widths = [float(modes[m].get(stage, 0.0) or 0.0) for m in names]
        ax.barh(names, widths, left=left, color=cmap(i % 10), label=stage.removeprefix("time/"))
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.set_xlabel("seconds per step")
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.35))
    ax.set_title(title)
    return _save(fig, path)


def curves_figure(curves: dict[str, dict[str, Any]], title: str, path: Path) -> bool:
    """Accuracy vs step and vs wall time per mode: mean over seeds with a min-max band, and the trailing-window
    mean when given. curves: {mode: {"step": [...], "wall": [...], "mean": [...], "lo": [...], "hi": [...],
    "smooth": [...] (optional)}}."""
    if not curves:
        return False
    fig, (ax_s, ax_w) = plt.subplots(1, 2, figsize=(11, 4))
    for mode, c in curves.items():
        color = COLORS.get(mode)
        smooth = c.get("smooth")
        for ax, x in ((ax_s, c["step"]), (ax_w, c["wall"])):
            ax.plot(x, c["mean"], "-", color=color, label=mode, alpha=0.45 if smooth else 1.0, linewidth=1)
            ax.fill_between(x, c["lo"], c["hi"], color=color, alpha=0.15)
            if smooth:
                ax.plot(x, smooth, "-", color=color, linewidth=2.2, label=f"{mode}, trailing mean")
    for ax, xlabel in ((ax_s, "step"), (ax_w, "wall time (s, mean over seeds)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("training accuracy")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def evidence_figure(series: dict[str, tuple[list[float], list[float | None]]], title: str, path: Path) -> bool:
    """The PRM's signals vs step: loss (left, with ln 2), accuracy and localisation with its chance rate
    (right). series: {label: (steps, values with None gaps)}; labels as bench/report_evidence.SIGNALS."""
    if not any(values for _, values in series.values()):
        return False
    fig, (ax_l, ax_r) = plt.subplots(1, 2, figsize=(11, 4))
    for label, (steps, values) in series.items():
        ax = ax_l if label.startswith("PRM loss") else ax_r
        ax.plot(steps, [float("nan") if v is None else v for v in values], "--" if "chance" in label else "-",
                label=label, linewidth=1.2)
    ax_l.axhline(0.6931471805599453, color="gray", linewidth=0.8, linestyle=":")
    for ax, ylabel in ((ax_l, "PRM loss"), (ax_r, "fraction")):
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)
