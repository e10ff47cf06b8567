"""curves.png from metrics.jsonl (valid, non-blank PNG; missing keys and empty runs are fine) and the rank-0
console (step line, final table, progress bars on a terminal, silence elsewhere)."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
from matplotlib.image import imread
from primeflow.trainer import console as console_mod
from primeflow.trainer.console import RunConsole
from primeflow.trainer.plots import plot_curves
from rich.console import Console

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _full_records(seed: int, n: int = 8) -> list[dict]:
    rng = random.Random(seed)
    return [{"step": s, "outcome_acc": rng.random(), "filter_kept_frac": rng.random(), "prm_loss": rng.random(),
             "prm_acc": rng.random(), "response_len": rng.uniform(5, 50), "time/rollout": rng.random(),
             "time/verify": rng.random(), "time/prm": rng.random(), "time/policy": rng.random()}
            for s in range(1, n + 1)]


def _png_pixels(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000
    return imread(str(path))


@pytest.mark.parametrize("variant", ["full", "outcome_only", "times_partial", "empty"])
def test_curves_png(tmp_path, seed, variant):
    records = _full_records(seed)
    if variant == "outcome_only":  # an outcome-only RLOO run: no PRM keys, no stage times
        records = [{"step": r["step"], "outcome_acc": r["outcome_acc"]} for r in records]
    elif variant == "times_partial":  # a stage that appears later, a null value, a step with no times
        records[3]["time/refit"] = 0.5
        records[4]["prm_loss"] = None
        records[5] = {"step": records[5]["step"], "outcome_acc": 0.5}
    elif variant == "empty":
        records = []
    out = plot_curves(_write(tmp_path / "metrics.jsonl", records), tmp_path / "plots" / "curves.png")
    assert out == tmp_path / "plots" / "curves.png"
    pixels = _png_pixels(out)
    assert pixels.shape[0] >= 600 and pixels.shape[1] >= 900
    assert float(np.std(pixels[..., :3])) > 0.01  # not a blank canvas
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary left


def test_curves_show_the_data(tmp_path, seed):
    """Two runs that differ only in outcome accuracy give different pictures (the data is drawn)."""
    a = _full_records(seed)
    b = [dict(r, outcome_acc=1.0 - r["outcome_acc"]) for r in a]
    pa = _png_pixels(plot_curves(_write(tmp_path / "a.jsonl", a), tmp_path / "a.png"))
    pb = _png_pixels(plot_curves(_write(tmp_path / "b.jsonl", b), tmp_path / "b.png"))
    assert pa.shape == pb.shape and not np.array_equal(pa, pb)


def test_curves_show_validation_accuracy(tmp_path, seed):
    """Validation steps (val/avg/avg@1 every few steps) are drawn: the picture changes with their values."""
    a = [dict(r, **({"val/avg/avg@1": 0.2} if r["step"] % 3 == 0 else {})) for r in _full_records(seed)]
    b = [dict(r, **({"val/avg/avg@1": 0.9} if r["step"] % 3 == 0 else {})) for r in _full_records(seed)]
    pa = _png_pixels(plot_curves(_write(tmp_path / "a.jsonl", a), tmp_path / "a.png"))
    pb = _png_pixels(plot_curves(_write(tmp_path / "b.jsonl", b), tmp_path / "b.png"))
    assert pa.shape == pb.shape and not np.array_equal(pa, pb)


def _console(terminal: bool = False) -> tuple[RunConsole, io.StringIO]:
    buf = io.StringIO()
    rich_console = Console(file=buf, width=200, force_terminal=terminal, color_system=None)
    return RunConsole(total_steps=20, enabled=True, console=rich_console), buf


def test_step_line_and_final_table():
    con, buf = _console()
    metrics = {"outcome_acc": 0.4375, "filter_kept_frac": 0.5, "prm_loss": 0.6931, "prm_acc": float("nan"),
               "pg_loss": -0.0123, "response_len": 17.25, "tokens_per_s": 812.4, "time/rollout": 2.0,
               "time/prm": 0.5}
    con.step_summary(3, metrics)
    line = buf.getvalue()
    assert line == ("step 3/20 | acc 0.438 | kept 0.50 | prm_loss 0.6931 | prm_acc - | pg_loss -0.0123 | "
                    "len 17.2 | tok/s 812 | 2.5s\n")
    buf.truncate(0)
    buf.seek(0)
    con.final_table([{"step": 1, **metrics}, {"step": 2, "outcome_acc": 0.75}])
    table = buf.getvalue()
    rows = [r for r in table.splitlines() if r.strip().startswith(("│", "|"))]
    assert len(rows) == 2, table
    assert "0.438" in rows[0] and "2.5" in rows[0] and "0.750" in rows[1]
    assert "prm_loss" in table and "clip" not in table  # only columns some step has


def test_step_time_is_the_measured_step_not_its_stages_counted_twice():
    """The trainer logs time/step (the whole step) beside time/<stage>; summing all time/* keys doubled it."""
    con, buf = _console()
    metrics = {"outcome_acc": 0.5, "time/rollout": 2.0, "time/policy": 0.75, "time/step": 3.0}
    con.step_summary(1, metrics)
    assert buf.getvalue().rstrip("\n").endswith("| 3.0s")
    buf.truncate(0)
    buf.seek(0)
    con.final_table([{"step": 1, **metrics}])
    (row,) = [r for r in buf.getvalue().splitlines() if r.strip().startswith(("│", "|"))]
    assert row.rstrip("│| ").endswith("3.0") and "5.8" not in row and "6.0" not in row


def test_progress_bar_on_a_terminal_and_plain_elsewhere():
    con, buf = _console(terminal=True)
    with con.stage("rollout", total=4) as bar:
        for _ in range(4):
            bar.advance()
    assert "rollout" in buf.getvalue()
    plain, plain_buf = _console(terminal=False)
    with plain.stage("rollout", total=4) as bar:
        bar.advance(4)
    assert plain_buf.getvalue() == ""


def test_silent_on_other_ranks(monkeypatch, capsys):
    monkeypatch.setattr(console_mod, "_rank", lambda: 1)
    con = RunConsole(total_steps=3)
    assert not con.enabled
    with con.stage("prm", total=2) as bar:
        bar.advance()
    con.step_summary(1, {"outcome_acc": 1.0})
    con.final_table([{"step": 1, "outcome_acc": 1.0}])
    con.print("x")
    assert capsys.readouterr() == ("", "")


def test_curves_show_error_localisation(tmp_path, seed):
    """prm/localisation and its chance rate are drawn: the picture changes with the localisation values."""
    def with_loc(value: float) -> list[dict]:
        return [dict(r, **{"prm/localisation": value, "prm/localisation_chance": 0.3, "prm/localisation_n": 5.0})
                for r in _full_records(seed)]

    pa = _png_pixels(plot_curves(_write(tmp_path / "a.jsonl", with_loc(0.3)), tmp_path / "a.png"))
    pb = _png_pixels(plot_curves(_write(tmp_path / "b.jsonl", with_loc(0.8)), tmp_path / "b.png"))
    assert pa.shape == pb.shape and not np.array_equal(pa, pb)


def test_a_stage_without_a_known_total_shows_no_count():
    """The trainer's stages count nothing it could show (no total): a spinner and the time, never `0/?`."""
    con, buf = _console(terminal=True)
    with con.stage("policy"):
        pass
    assert "policy" in buf.getvalue() and "/?" not in buf.getvalue() and "0/" not in buf.getvalue()
    con, buf = _console(terminal=True)
    with con.stage("rollout", total=4) as bar:
        bar.advance(4)
    assert "4/4" in buf.getvalue()


def _wide_records(n: int = 3) -> list[dict]:
    """Every summary column with the widest values a run gives (signs, exponents, five-digit rates)."""
    return [{"step": s, "outcome_acc": 0.4375, "filter_kept_frac": 0.5, "prm_loss": 0.6931, "prm_acc": 0.8125,
             "pg_loss": -0.1058, "pg_clipfrac": 0.125, "logprob_mismatch": 1.97e-06, "prm/localisation": 0.5625,
             "response_len": 321.75, "tokens_per_s": 12345.6 + s, "time/step": 1234.5 + s} for s in range(1, n + 1)]


@pytest.mark.parametrize(("width", "parts"), [(80, 2), (110, 1)])
def test_final_table_fits_the_terminal_without_cutting_numbers(width, parts):
    """At 80 columns the table used to cut every number (`0.43…`); now columns move to a second table, each
    led by the step, and every cell is whole."""
    buf = io.StringIO()
    con = RunConsole(total_steps=3, enabled=True,
                     console=Console(file=buf, width=width, force_terminal=True, color_system=None))
    records = _wide_records()
    con.final_table(records)
    out = buf.getvalue()
    assert "…" not in out, out
    assert max(len(line) for line in out.splitlines()) <= width, out
    cells = [c.strip() for line in out.splitlines() for c in line.replace("┃", "│").split("│")]
    for r in records:
        for key, _, spec in console_mod.SUMMARY_KEYS:
            assert spec.format(r[key]) in cells, (key, out)
        assert f"{r['time/step']:.1f}" in cells, out
    # the step column leads every part, so each row of every part says its step
    assert cells.count("step") == parts, out
    assert all(cells.count(str(r["step"])) == parts for r in records), out


def test_trend_line_is_the_trailing_mean(seed):
    """curves.png's trend: point i is the mean of the last TREND_STEPS values up to i (fewer at the start)."""
    from primeflow.trainer.plots import TREND_STEPS, trailing_mean

    rng = random.Random(seed)
    values = [rng.uniform(-1, 1) for _ in range(3 * TREND_STEPS + 1)]
    got = trailing_mean(values)
    for i, v in enumerate(got):
        window = values[max(0, i - TREND_STEPS + 1):i + 1]
        assert abs(v - sum(window) / len(window)) <= 1e-12, i
    assert trailing_mean([1.0, 3.0], window=5) == [1.0, 2.0]
