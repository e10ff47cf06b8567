"""plot_curves: the run's curves.png from metrics.jsonl (outcome and validation accuracy, PRM loss / accuracy, the
PRM's error localisation vs chance, response length, stacked stage times). Uses matplotlib's Agg canvas directly
(no pyplot global state, no display). A panel whose keys are absent says so instead of failing: a run without a
PRM (outcome-only RLOO) or an early crash still gets a picture."""

from __future__ import annotations

import os
from pathlib import Path

from .learning_summary import LN2
from .metrics_log import read_metrics

STAGE_ORDER = ("time/rollout", "time/verify", "time/old_logp", "time/prm", "time/advantage", "time/policy",
               "time/refit")


VALIDATION_KEY = "val/avg/avg@1"  # stages/validation.py: the mean over the validation benchmarks
# One step's accuracy is a mean of 32 samples on the tiny run (about +-0.09), so the noisy per-step series are
# drawn faint with their trailing mean over this many steps on top: a trend is readable only that way.
TREND_STEPS = 10


def trailing_mean(values: list[float], window: int = TREND_STEPS) -> list[float]:
    """Point i: the mean of values[max(0, i - window + 1) : i + 1]."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _plot_with_trend(ax, x: list[int], y: list[float], *, label: str, **style) -> None:
    ax.plot(x, y, alpha=0.3, ms=2, **style)
    ax.plot(x, trailing_mean(y), lw=2, label=f"{label} ({TREND_STEPS}-step mean)", **{
        k: v for k, v in style.items() if k != "marker"})


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in records if r.get(key) is not None]
    return [p[0] for p in pts], [float(p[1]) for p in pts]


def _no_data(ax, keys: str) -> None:
    ax.text(0.5, 0.5, f"no data ({keys})", ha="center", va="center", transform=ax.transAxes, color="gray")


def _plot_localisation(ax, records: list[dict]) -> None:
    """prm/localisation (stages/localisation.py) against its chance rate: above chance, the PRM's lowest step
    reward lands on the first wrong step more often than a random step would."""
    drew = False
    for key, label, style in (("prm/localisation", "lowest step = first wrong step", "-"),
                              ("prm/localisation_chance", "chance (1 / steps)", "--")):
        x, y = _series(records, key)
        if x and style == "-":
            _plot_with_trend(ax, x, y, label=label, color="tab:blue", marker="o")
        elif x:
            ax.plot(x, y, linestyle=style, color="tab:orange", label=label)
        drew = drew or bool(x)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="best", fontsize=8) if drew else _no_data(ax, "prm/localisation: a task with step labels")
    ax.set_title("PRM error localisation (wrong responses)")


def plot_curves(metrics_jsonl: str | os.PathLike, out_png: str | os.PathLike) -> Path:
    """Write the run's curves (five panels) to `out_png` (atomically); returns its path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    records = read_metrics(metrics_jsonl)
    fig = Figure(figsize=(15, 7.5), dpi=100)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 6)
    ax_acc, ax_prm, ax_loc = (fig.add_subplot(grid[0, 2 * i:2 * i + 2]) for i in range(3))
    ax_len, ax_time = fig.add_subplot(grid[1, 0:3]), fig.add_subplot(grid[1, 3:6])

    drew = False
    for key, label in (("outcome_acc", "outcome accuracy"), ("filter_kept_frac", "filter kept fraction"),
                       (VALIDATION_KEY, "validation accuracy (avg@1)")):
        x, y = _series(records, key)
        if x and key == "outcome_acc":
            _plot_with_trend(ax_acc, x, y, label=label, color="tab:blue", marker="o")
        elif x:
            validation = key == VALIDATION_KEY
            ax_acc.plot(x, y, marker="D" if validation else "o", ms=3, label=label,
                        color="tab:orange" if validation else "tab:gray", alpha=1.0 if validation else 0.4)
        drew = drew or bool(x)
    ax_acc.set_title("outcome accuracy")
    ax_acc.set_ylim(-0.02, 1.02)
    ax_acc.legend(loc="best", fontsize=8) if drew else _no_data(ax_acc, "outcome_acc")

    x, y = _series(records, "prm_loss")
    if x:
        _plot_with_trend(ax_prm, x, y, label="prm_loss", color="tab:red", marker="o")
        ax_prm.axhline(LN2, color="tab:red", linestyle=":", lw=1, label="ln 2 (no signal)")
        ax_prm.set_ylabel("PRM loss", color="tab:red")
        ax_prm.legend(loc="upper left", fontsize=7)
    x2, y2 = _series(records, "prm_acc")
    if x2:
        twin = ax_prm.twinx()
        _plot_with_trend(twin, x2, y2, label="prm_acc", color="tab:blue", marker="s")
        twin.axhline(0.5, color="tab:blue", linestyle=":", lw=1)
        twin.set_ylabel("PRM pairwise accuracy (chance 0.5)", color="tab:blue")
        twin.set_ylim(-0.02, 1.02)
    if not x and not x2:
        _no_data(ax_prm, "prm_loss, prm_acc")
    ax_prm.set_title("PRM loss / accuracy")

    _plot_localisation(ax_loc, records)

    x, y = _series(records, "response_len")
    ax_len.plot(x, y, color="tab:green", marker="o", ms=3) if x else _no_data(ax_len, "response_len")
    ax_len.set_title("mean response length (tokens)")

    keys = [k for k in STAGE_ORDER if any(r.get(k) is not None for r in records)]
    # time/step is the total of the stages, not a stage: stacking it would count every second twice
    keys += sorted({k for r in records for k in r if k.startswith("time/") and k not in keys and k != "time/step"})
    steps = [r["step"] for r in records if any(r.get(k) is not None for k in keys)]
    if keys and steps:
        by_step = {r["step"]: r for r in records}
        stacks = [[float(by_step[s].get(k) or 0.0) for s in steps] for k in keys]
        ax_time.stackplot(steps, stacks, labels=[k.removeprefix("time/") for k in keys])
        ax_time.legend(loc="upper left", fontsize=7, ncol=2)
        ax_time.set_ylabel("seconds")
    else:
        _no_data(ax_time, "time/*")
    ax_time.set_title("stage times per step (stacked)")

    for ax in (ax_acc, ax_prm, ax_loc, ax_len, ax_time):
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.suptitle(f"{Path(metrics_jsonl).parent.name}: {len(records)} step(s)")
    fig.tight_layout()

    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        fig.savefig(f, format="png")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    return out
