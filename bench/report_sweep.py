"""PRM sweeps (bench/prm_sweep.py) in the report: one row per run, so the choice of the tiny presets' PRM
settings can be read against the runs behind it (issue 18 part 2).

Each run's summary holds means over its first and last `window` steps (prm_sweep.summarise); a run "learns"
when its PRM loss ends below ln 2 (the loss of a PRM whose rewards are all 0) and its pairwise accuracy ends
above 0.5 (chance)."""

from __future__ import annotations

import math
from typing import Any

from . import report_fmt as fmt
from .report_data import Source


def _pair(summary: dict[str, Any], key: str) -> str:
    first, last = summary.get(f"{key}/first"), summary.get(f"{key}/last")
    if first is None or last is None:
        return "—"
    return f"{first:.4f} → {last:.4f}"


def _reward_scale(summary: dict[str, Any]) -> str:
    """The mean total implicit reward of correct / wrong responses over the last window ("—" in sweeps recorded
    before the trainer logged it)."""
    correct, wrong = summary.get("prm/reward_correct/last"), summary.get("prm/reward_wrong/last")
    if correct is None or wrong is None:
        return "—"
    return f"{correct:+.3f} / {wrong:+.3f}"


def learns(summary: dict[str, Any], ln2: float = math.log(2)) -> bool:
    """PRM loss ends below ln 2 and pairwise accuracy ends above chance."""
    loss, acc = summary.get("prm_loss/last"), summary.get("prm_acc/last")
    return loss is not None and acc is not None and loss < ln2 and acc > 0.5


def render(source: Source) -> str:
    data = source.data
    window, ln2 = data.get("window", "?"), data.get("ln2", math.log(2))
    lines = [f"### `{source.name}`", "", f"Command: `{source.command}`"
             + (f" ({source.command_note})" if source.command_note else ""), "",
             f"{data.get('steps', '?')} steps per run from config `{data.get('config') or 'configs/tiny_cpu.yaml'}`"
             f" (shared: {', '.join(data.get('shared_settings', [])) or 'none'}); first → last columns are means "
             f"over the first and last {window} steps. PRM loss ln 2 = {ln2:.4f} and accuracy 0.5 are no signal.",
             ""]
    rows = []
    for run in data.get("runs", []):
        s = run.get("summary", {})
        loc, chance = s.get("prm/localisation/last"), s.get("prm/localisation_chance/last")
        rows.append([" ".join(run.get("overrides", [])) or "base", _pair(s, "prm_loss"), _pair(s, "prm_acc"),
                     "—" if loc is None else f"{loc:.3f} vs {chance:.3f}", _reward_scale(s),
                     _pair(s, "outcome_acc"), "yes" if learns(s, ln2) else "no", fmt.seconds(s.get("time/step"))])
    lines += [fmt.table(["overrides", "PRM loss", "PRM pairwise acc", "localisation vs chance (last)",
                         "mean R correct / wrong (last)", "outcome acc", "PRM learns", "step time"], rows), ""]
    n_learn = sum(r[6] == "yes" for r in rows)
    lines += [f"{n_learn} of {len(rows)} runs end with the PRM loss below ln 2 and its accuracy above chance.", ""]
    return "\n".join(lines)


def render_offline(source: Source) -> str:
    """An offline PRM diagnostic (bench/prm_offline.py): per run, the held-out numbers after each epoch."""
    data = source.data
    desc = ("synthetic pairs (one correct, one with a wrong step)" if data.get("data") == "synthetic" else
            f"the SFT model's own samples ({data.get('samples', '?')} per problem, mixed-outcome problems only)")
    lines = [f"### `{source.name}`", "", f"Command: `{source.command}`"
             + (f" ({source.command_note})" if source.command_note else ""), "",
             f"Data: {desc}; {data.get('train_groups', data.get('train_problems', '?'))} training and "
             f"{data.get('test_groups', data.get('test_problems', '?'))} held-out problems; batch "
             f"{data.get('batch', '?')}; PRM trained through `{data.get('path', 'hf')}`. Epoch 0 is the untrained "
             f"PRM (R = 0: CE ln 2, pairwise 0.5).", ""]
    rows = []
    for run in data.get("runs", []):
        for h in run.get("history", []):
            loc = h.get("localisation")
            rows.append([f"lr {run.get('lr')} beta {run.get('beta')}", str(h.get("epoch")), f"{h['ce']:.4f}",
                         f"{h['pairwise_acc']:.3f}",
                         "—" if loc is None else f"{loc:.3f} vs {h.get('localisation_chance', 0):.3f}"])
    lines += [fmt.table(["run", "epoch", "held-out CE", "held-out pairwise acc", "localisation vs chance"], rows), ""]
    return "\n".join(lines)
