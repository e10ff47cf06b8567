"""bench/report_evidence.py: the bootstrap interval of a final-accuracy difference, and the PRM evidence table
of a learning-efficiency result, on hand-computable inputs."""

from __future__ import annotations

import json
import math
import re

import pytest

PNG = b"\x89PNG\r\n\x1a\n"


def test_bootstrap_interval_on_a_case_with_a_known_distribution(bench_module):
    ev = bench_module("report_evidence")
    # a = [0, 1] resampled: mean 0 (p 1/4), 0.5 (p 1/2), 1 (p 1/4); b = [0] is constant. The 2.5 % and 97.5 %
    # percentiles of the difference are therefore 0 and 1, the point estimate 0.5.
    assert ev.bootstrap_difference([0.0, 1.0], [0.0]) == (0.5, 0.0, 1.0)
    # constant seeds on both sides: the interval collapses onto the difference
    point, lo, hi = ev.bootstrap_difference([0.3] * 5, [0.1] * 5)
    assert point == pytest.approx(0.2) and lo == pytest.approx(0.2) and hi == pytest.approx(0.2)
    # sign: a below b gives a negative difference (a swapped argument order must fail here)
    point, lo, hi = ev.bootstrap_difference([0.1, 0.12, 0.14], [0.5, 0.52])
    assert point < 0 and lo <= point <= hi < 0
    with pytest.raises(ValueError, match="at least one value"):
        ev.bootstrap_difference([], [0.1])


def test_bootstrap_interval_stays_inside_the_resampled_extremes(bench_module, seed):
    import random

    ev = bench_module("report_evidence")
    rng = random.Random(seed)
    a = [rng.uniform(0, 1) for _ in range(5)]
    b = [rng.uniform(0, 1) for _ in range(4)]
    point, lo, hi = ev.bootstrap_difference(a, b, seed=seed)
    assert point == pytest.approx(sum(a) / 5 - sum(b) / 4)
    assert min(a) - max(b) - 1e-12 <= lo <= point <= hi <= max(a) - min(b) + 1e-12


def test_learning_efficiency_reports_the_interval_and_the_prm_evidence(tmp_path, bench_module):
    report = bench_module("report")
    curves = {"prime": {}, "rloo": {}}
    evidence = {"prime": {}, "rloo": {}}
    for seed in range(3):
        curves["rloo"][str(seed)] = [[s, 10.0 * s, 0.4] for s in range(1, 11)]
        curves["prime"][str(seed)] = [[s, 11.0 * s, 0.5 + 0.01 * seed] for s in range(1, 11)]
        # window 2 (20 % of 10 steps): prm_loss first 2 steps 0.70 on every seed, last 2 steps 0.6 + 0.01*seed
        loss = [0.70, 0.70, *[0.69] * 6, 0.6 + 0.01 * seed, 0.6 + 0.01 * seed]
        local = [None, 0.5, *[0.4] * 6, 0.75, 0.25]  # a step without wrong responses logs nothing
        evidence["prime"][str(seed)] = {"prm_loss": loss, "prm_acc": [0.5] * 10, "prm/localisation": local,
                                        "prm/localisation_chance": [0.25] * 10}
        if seed:  # recorded on seeds 1 and 2 only: the row averages the seeds that have it
            evidence["prime"][str(seed)].update({"prm/reward_correct": [0.1 * seed] * 10,
                                                 "prm/reward_wrong": [-0.2] * 10})
        evidence["rloo"][str(seed)] = {"outcome_acc": [0.4] * 10}
    (tmp_path / "learning_efficiency_chain.json").write_text(json.dumps(
        {"command": "python -m bench.prime_vs_rloo", "seeds": [0, 1, 2], "curves": curves, "evidence": evidence}))
    text = report.build_report(tmp_path, tmp_path / "REPORT.md")
    found = re.search(r"Final accuracy prime − rloo: ([+-][0-9.]+), bootstrap 95 % interval \[([+-][0-9.]+), "
                      r"([+-][0-9.]+)\] over seeds \(3 vs 3", text)
    assert found, text
    point, lo, hi = map(float, found.groups())
    assert point == pytest.approx(0.11, abs=5e-4)  # mean(0.50, 0.51, 0.52) - 0.40
    assert 0.10 - 5e-4 <= lo <= point <= hi <= 0.12 + 5e-4
    rows = {line.split(" | ")[0].strip("| "): [c.strip(" |") for c in line.split(" | ")]
            for line in text.splitlines() if line.startswith(("| PRM", "| error", "| mean total"))}
    assert rows["PRM loss (ln 2 = 0.693: no signal)"][1:] == ["0.7", "0.61", "3"]
    first_local = float(rows["error localisation"][1])
    assert math.isclose(first_local, 0.5)  # the None step is skipped, not counted as 0
    assert float(rows["error localisation"][2]) == pytest.approx(0.5)
    assert rows["mean total reward R, correct responses"][1:] == ["0.15", "0.15", "2"]
    assert rows["mean total reward R, wrong responses"][1:] == ["-0.2", "-0.2", "2"]
    assert "Why, from the PRM of `rloo`" not in text  # outcome-only RLOO has no PRM signals
    assert (tmp_path / "plots" / "learning_efficiency_chain_prime_prm.png").read_bytes()[:8] == PNG
