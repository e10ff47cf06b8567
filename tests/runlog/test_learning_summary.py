"""The run's "did it learn?" table (trainer/learning_summary.py): first- and last-window means of hand-made
records, disjoint windows on short runs, missing and non-finite values skipped, rows only for logged metrics."""

from __future__ import annotations

import io
import math

from primeflow.trainer.console import RunConsole
from primeflow.trainer.learning_summary import LN2, learning_rows, summary_window
from rich.console import Console


def _records(steps: int) -> list[dict]:
    """outcome_acc = step / 100, prm_loss = 0.7 - step / 1000, localisation 0.5 with chance 0.25, a NaN PRM
    accuracy on step 2, validation on steps 10, 20 and 30."""
    rows = []
    for s in range(1, steps + 1):
        r = {"step": s, "outcome_acc": s / 100, "prm_loss": 0.7 - s / 1000, "prm_acc": 0.5 + s / 200,
             "prm/localisation": 0.5, "prm/localisation_chance": 0.25}
        if s == 2:
            r["prm_acc"] = float("nan")
        if s % 10 == 0:
            r["val/avg/avg@1"] = s / 50
        rows.append(r)
    return rows


def test_window_means_of_the_first_and_last_ten_steps():
    rows = {r.label: r for r in learning_rows(_records(30))}
    acc = rows["outcome accuracy"]
    assert acc.steps == "1-10 -> 21-30"
    assert math.isclose(acc.first, 5.5 / 100) and math.isclose(acc.last, 25.5 / 100)
    loss = rows["PRM loss"]
    assert math.isclose(loss.first, 0.7 - 5.5 / 1000) and math.isclose(loss.last, 0.7 - 25.5 / 1000)
    assert loss.no_signal == f"ln 2 = {LN2:.4f}"
    pairwise = rows["PRM pairwise accuracy"]  # step 2's NaN is left out of the first window's mean
    assert math.isclose(pairwise.first, 0.5 + (55 - 2) / 9 / 200), pairwise
    assert rows["PRM localisation"].no_signal == "chance 0.25 -> 0.25"
    val = rows["validation accuracy (avg@1)"]  # logged every 10 steps: its first and last evaluations
    assert (val.steps, val.first, val.last) == ("10 -> 30", 0.2, 0.6)


def test_short_runs_keep_the_two_windows_disjoint():
    assert learning_rows(_records(2)) == []
    assert [summary_window(n) for n in (3, 6, 29, 30, 300)] == [1, 2, 9, 10, 10]
    acc = {r.label: r for r in learning_rows(_records(6))}["outcome accuracy"]
    assert acc.steps == "1-2 -> 5-6" and math.isclose(acc.first, 0.015) and math.isclose(acc.last, 0.055)


def test_rows_only_for_what_the_run_logged():
    rloo = [{"step": s, "outcome_acc": 0.5} for s in range(1, 10)]  # outcome-only: no PRM, no step labels
    assert [r.label for r in learning_rows(rloo)] == ["outcome accuracy"]


def test_the_console_prints_the_table_under_the_run():
    buf = io.StringIO()
    con = RunConsole(total_steps=30, enabled=True,
                     console=Console(file=buf, width=120, force_terminal=True, color_system=None))
    con.learning_table(_records(30))
    out = buf.getvalue()
    line = next(line for line in out.splitlines() if "outcome accuracy" in line)
    assert "0.055" in line and "0.255" in line and "1-10 -> 21-30" in line, out
    assert "ln 2 = 0.6931" in out and "chance 0.25 -> 0.25" in out
    silent = RunConsole(total_steps=2, enabled=True,
                        console=Console(file=(quiet := io.StringIO()), width=120, color_system=None))
    silent.learning_table(_records(2))
    assert quiet.getvalue() == ""
