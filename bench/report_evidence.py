"""The statistics and the evidence behind a PRIME vs RLOO comparison (issue 18): a bootstrap interval of the
final-accuracy difference over seeds, and the PRM's own learning signals (loss vs ln 2, pairwise accuracy,
error localisation vs chance) as a table and a figure.

Bootstrap: each mode's per-seed final accuracies are resampled with replacement independently (the seeds of
the two modes share data order and SFT model but not their rollouts, so they are not treated as pairs), the
difference of the resampled means is taken B = 10,000 times with a fixed generator, and the 2.5 / 97.5
percentiles are the 95 % interval. With 5 seeds per mode the interval is wide: it says how much the seeds
disagree, not more."""

from __future__ import annotations

import random
from pathlib import Path

from primeflow.trainer.learning_summary import finite_mean

from . import report_fmt as fmt
from .report_plots import evidence_figure

RESAMPLES = 10_000
SIGNALS = (("prm_loss", "PRM loss (ln 2 = 0.693: no signal)"), ("prm_acc", "PRM pairwise accuracy (0.5: chance)"),
           ("prm/localisation", "error localisation"), ("prm/localisation_chance", "its chance rate"))
# The reward scale by class (trainer/stages/prm.py reward_scale): table rows only, as its axis is not the
# figure's; comparisons recorded before the trainer logged it have no such rows.
REWARD_SCALE = (("prm/reward_correct", "mean total reward R, correct responses"),
                ("prm/reward_wrong", "mean total reward R, wrong responses"))


def bootstrap_difference(a: list[float], b: list[float], *, resamples: int = RESAMPLES,
                         seed: int = 0) -> tuple[float, float, float]:
    """(mean(a) - mean(b), 2.5 %, 97.5 % bootstrap percentiles of that difference)."""
    if not a or not b:
        raise ValueError("bootstrap_difference needs at least one value on each side")
    rng = random.Random(seed)
    diffs = sorted(sum(rng.choices(a, k=len(a))) / len(a) - sum(rng.choices(b, k=len(b))) / len(b)
                   for _ in range(resamples))
    point = sum(a) / len(a) - sum(b) / len(b)
    return point, diffs[int(0.025 * (resamples - 1))], diffs[int(0.975 * (resamples - 1))]


def _seed_mean(per_seed: dict[str, dict[str, list]], key: str, part: slice) -> tuple[float | None, int]:
    means = [m for s in per_seed.values() if (m := finite_mean(s.get(key, [])[part])) is not None]
    return (sum(means) / len(means) if means else None), len(means)


def mean_series(per_seed: dict[str, dict[str, list]], key: str) -> tuple[list[float], list[float | None]]:
    """(steps 1..n, the mean over seeds at each step of `key`, None where no seed has a value)."""
    n = min((len(s.get(key, [])) for s in per_seed.values()), default=0)
    return list(range(1, n + 1)), [finite_mean([s[key][i] for s in per_seed.values()]) for i in range(n)]


def render_evidence(evidence: dict[str, dict[str, dict[str, list]]], window: int, plots_dir: Path,
                    stem: str, rel: str) -> list[str]:
    """Markdown lines: the PRM signals of each mode that has them, first vs last `window` steps."""
    lines: list[str] = []
    for mode, per_seed in evidence.items():
        if not per_seed or not any("prm_loss" in s for s in per_seed.values()):
            continue
        header = ["signal", f"first {window} steps", f"last {window} steps", "seeds"]
        body = []
        for key, label in (*SIGNALS, *REWARD_SCALE):
            first, n = _seed_mean(per_seed, key, slice(0, window))
            last, _ = _seed_mean(per_seed, key, slice(-window, None))
            if n:
                body.append([label, fmt.number(first), fmt.number(last), str(n)])
        lines += [f"Why, from the PRM of `{mode}` (means over seeds of each seed's window mean; localisation: the "
                  "fraction of wrong responses whose lowest step reward falls on the first wrong step):", "",
                  fmt.table(header, body), ""]
        name = f"{stem}_{mode}_prm.png"
        series = {label: mean_series(per_seed, key) for key, label in SIGNALS}
        if evidence_figure(series, f"{mode}: the PRM's signals (mean over seeds)", plots_dir / name):
            lines += [f"![PRM evidence]({rel}/{name})", ""]
    return lines
