"""bench/report_sweep.py: a PRM sweep renders one row per run (with the reward scale by class where it was
recorded), says which runs' PRM learned (loss below ln 2 AND accuracy above chance), and is recognised by its
kind or its file name."""

from __future__ import annotations

import json
import math


def _run(overrides, loss, acc):
    first_loss, last_loss = loss
    first_acc, last_acc = acc
    return {"overrides": overrides, "wall_s": 1.0, "summary": {
        "prm_loss/first": first_loss, "prm_loss/last": last_loss, "prm_acc/first": first_acc,
        "prm_acc/last": last_acc, "prm/localisation/last": 0.5, "prm/localisation_chance/last": 0.25,
        "outcome_acc/first": 0.3, "outcome_acc/last": 0.4, "time/step": 2.0}}


def test_learns_needs_both_the_loss_below_ln2_and_the_accuracy_above_chance(bench_module):
    sweep = bench_module("report_sweep")
    ln2 = math.log(2)
    assert sweep.learns({"prm_loss/last": ln2 - 1e-3, "prm_acc/last": 0.6})
    assert not sweep.learns({"prm_loss/last": ln2 + 1e-3, "prm_acc/last": 0.6})  # loss above ln 2
    assert not sweep.learns({"prm_loss/last": ln2 - 1e-3, "prm_acc/last": 0.5})  # accuracy at chance
    assert not sweep.learns({"prm_acc/last": 0.9})  # no loss recorded


def test_a_sweep_file_renders_its_runs_in_the_report(tmp_path, bench_module):
    report = bench_module("report")
    runs = [_run(["prm.optim.lr=1e-4"], (0.70, 0.68), (0.45, 0.61)),
            _run(["prm.optim.lr=3e-4"], (0.73, 0.75), (0.46, 0.48))]
    runs[0]["summary"].update({"prm/reward_correct/last": 0.0125, "prm/reward_wrong/last": -0.25})
    body = {"command": "python -m bench.prm_sweep x", "steps": 40, "config": "configs/tiny_cpu_chain.yaml",
            "window": 10, "shared_settings": ["data.task=chain"], "ln2": math.log(2), "runs": runs}
    (tmp_path / "prm_sweep_named.json").write_text(json.dumps(body))  # recognised by its name
    (tmp_path / "other.json").write_text(json.dumps({"kind": "prm_sweep", **body}))  # ... and by its kind
    text = report.build_report(tmp_path, tmp_path / "REPORT.md")
    section = text.split("## PRM sweeps")[1].split("\n## ")[0]
    assert section.count("| prm.optim.lr=1e-4 | 0.7000 → 0.6800 | 0.4500 → 0.6100 | 0.500 vs 0.250 "
                         "| +0.013 / -0.250 |") == 2
    assert section.count("| prm.optim.lr=3e-4 | 0.7300 → 0.7500 | 0.4600 → 0.4800 | 0.500 vs 0.250 | — |") == 2
    assert section.count("1 of 2 runs end with the PRM loss below ln 2") == 2
    assert "Unrecognised results files" in text and "`other.json`" not in text.split("Unrecognised")[1]


def test_an_offline_prm_file_renders_its_epochs(tmp_path, bench_module):
    report = bench_module("report")
    hist = [{"epoch": 0, "ce": math.log(2), "pairwise_acc": 0.5, "localisation": 0.25, "localisation_chance": 0.25},
            {"epoch": 1, "ce": 0.62, "pairwise_acc": 0.86, "localisation": 0.74, "localisation_chance": 0.25}]
    body = {"kind": "prm_offline", "command": "python -m bench.prm_offline x", "data": "policy", "samples": 4,
            "train_groups": 128, "test_groups": 188, "batch": 8, "path": "trainer",
            "runs": [{"lr": 1e-4, "beta": 0.05, "history": hist}]}
    (tmp_path / "prm_offline_x.json").write_text(json.dumps(body))
    text = report.build_report(tmp_path, tmp_path / "REPORT.md")
    section = text.split("## PRM offline")[1].split("\n## ")[0]
    assert "| lr 0.0001 beta 0.05 | 1 | 0.6200 | 0.860 | 0.740 vs 0.250 |" in section
    assert "| lr 0.0001 beta 0.05 | 0 | 0.6931 | 0.500 | 0.250 vs 0.250 |" in section
    assert "128 training and 188 held-out problems" in section and "`trainer`" in section
    assert "`prm_offline_x.json`" not in text.split("Unrecognised")[1]
