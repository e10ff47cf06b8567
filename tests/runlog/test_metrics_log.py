"""MetricsLogger: metrics.jsonl records, TensorBoard event files read back with tensorboard's own
EventAccumulator, truncate_after on resume (file and TensorBoard), torn lines, rank-0 only, bad input,
optional W&B."""

from __future__ import annotations

import json
import math
import random
import sys
import types

import numpy as np
import pytest
import torch
from primeflow.trainer import metrics_log
from primeflow.trainer.metrics_log import MetricsLogger, read_metrics
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

KEYS = ["outcome_acc", "filter_kept_frac", "prm_loss", "prm_acc", "pg_loss", "pg_clipfrac", "logprob_mismatch",
        "response_len", "tokens_per_s", "time/rollout", "time/verify", "time/old_logp", "time/prm",
        "time/advantage", "time/policy", "time/refit"]


def _random_metrics(rng: random.Random) -> dict:
    return {k: rng.uniform(-3, 3) * 10 ** rng.randint(-4, 3) for k in KEYS}


def _scalars(run_dir, key):
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(key)]


def test_records_and_tensorboard(tmp_path, seed):
    rng = random.Random(seed)
    logged = {}
    with MetricsLogger(tmp_path) as logger:
        for step in (1, 2, 5, 9):
            m = _random_metrics(rng)
            logged[step] = m
            logger.log(step, m)
        # Tensor / numpy scalars and ints are accepted; non-finite values become null (strict JSON).
        logger.log(10, {"outcome_acc": torch.tensor(0.25), "prm_acc": np.float32(0.5), "response_len": 7,
                        "prm_loss": float("nan"), "pg_loss": float("inf")})
    text = (tmp_path / "metrics.jsonl").read_text()
    assert text.endswith("\n") and len(text.splitlines()) == 5
    records = [json.loads(line) for line in text.splitlines()]  # strict JSON per line
    for rec, step in zip(records, (1, 2, 5, 9), strict=False):
        assert rec["step"] == step and set(rec) == {"step", *KEYS}
        assert all(rec[k] == logged[step][k] for k in KEYS)  # JSON floats round-trip exactly
    assert records[-1] == {"step": 10, "outcome_acc": 0.25, "prm_acc": 0.5, "response_len": 7.0, "prm_loss": None,
                           "pg_loss": None}
    assert "NaN" not in text and "Infinity" not in text
    # TensorBoard stores float32 scalars: compare at float32 precision.
    for key in ("outcome_acc", "time/rollout", "tokens_per_s"):
        got = _scalars(tmp_path, key)
        want = [(s, logged[s][key]) for s in (1, 2, 5, 9)] + ([(10, 0.25)] if key == "outcome_acc" else [])
        assert [s for s, _ in got] == [s for s, _ in want]
        for (_, g), (_, w) in zip(got, want, strict=True):
            assert g == np.float32(w), (key, g, w)
    assert [s for s, _ in _scalars(tmp_path, "prm_loss")] == [1, 2, 5, 9]  # the NaN at step 10 is skipped


def test_truncate_after_on_resume(tmp_path, seed):
    rng = random.Random(seed)
    with MetricsLogger(tmp_path) as logger:
        for step in range(1, 7):
            logger.log(step, {"outcome_acc": rng.random()})
    before = read_metrics(tmp_path / "metrics.jsonl")
    # A resumed process opens the run again and rewinds to its checkpoint (step 3).
    with MetricsLogger(tmp_path) as logger:
        with pytest.raises(ValueError, match="step 4 logged after step 6"):
            logger.log(4, {"outcome_acc": 0.0})
        assert logger.truncate_after(3) == 3
        assert read_metrics(tmp_path / "metrics.jsonl") == before[:3]
        with pytest.raises(ValueError, match="step 3 logged after step 3"):
            logger.log(3, {"outcome_acc": 0.0})
        logger.log(4, {"outcome_acc": 0.125})
        logger.log(5, {"outcome_acc": 0.375})
    after = read_metrics(tmp_path / "metrics.jsonl")
    assert after == before[:3] + [{"step": 4, "outcome_acc": 0.125}, {"step": 5, "outcome_acc": 0.375}]
    # TensorBoard's view drops the abandoned steps 4..6 (purge_step) and shows the resumed ones.
    got = _scalars(tmp_path, "outcome_acc")
    assert [s for s, _ in got] == [1, 2, 3, 4, 5]
    assert got[3][1] == np.float32(0.125) and got[4][1] == np.float32(0.375)
    assert got[0][1] == np.float32(before[0]["outcome_acc"])
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        assert logger.truncate_after(0) == 5
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_torn_and_corrupt_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "a": 1.0}\n{"step": 2, "a": 2.0}\n{"step": 3, "a"')  # killed mid-append
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log(3, {"a": 3.0})
    assert path.read_text() == '{"step": 1, "a": 1.0}\n{"step": 2, "a": 2.0}\n{"step": 3, "a": 3.0}\n'
    path.write_text('{"step": 1}\n{oops\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: not a JSON object"):
        read_metrics(path)
    path.write_text('{"step": "one"}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:1: expected a JSON object with an integer 'step'"):
        read_metrics(path)


def test_bad_metrics(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        with pytest.raises(TypeError, match=r"metric 'acc': expected a real number, got str"):
            logger.log(1, {"acc": "0.5"})
        with pytest.raises(TypeError, match=r"metric 'acc': expected a scalar, got a value of shape \[3\]"):
            logger.log(1, {"acc": torch.ones(3)})
        with pytest.raises(TypeError, match=r"metric 'flag': expected a real number, got bool"):
            logger.log(1, {"flag": True})
        with pytest.raises(ValueError, match="metric name 'step' is not allowed"):
            logger.log(1, {"step": 1})
        with pytest.raises(ValueError, match="step must be a non-negative int"):
            logger.log(-1, {})
        with pytest.raises(TypeError, match="metrics must be a dict"):
            logger.log(1, [("a", 1.0)])
    assert read_metrics(tmp_path / "metrics.jsonl") == []  # nothing half-written by the rejected calls


def test_only_rank0_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics_log, "_rank", lambda: 1)
    with MetricsLogger(tmp_path / "r1") as logger:
        logger.log(1, {"a": 1.0})
        assert logger.truncate_after(0) == 0
    assert not (tmp_path / "r1").exists()
    with MetricsLogger(tmp_path / "all", rank0_only=False, tensorboard=False) as logger:
        logger.log(1, {"a": 1.0})
    assert read_metrics(tmp_path / "all" / "metrics.jsonl") == [{"step": 1, "a": 1.0}]


def test_wandb_is_optional(tmp_path, monkeypatch):
    # wandb is not a dependency: with it absent, enabling it is a clear error; without options it is
    # never imported.
    monkeypatch.setitem(sys.modules, "wandb", None)
    MetricsLogger(tmp_path / "no_wandb", tensorboard=False).close()
    with pytest.raises(ImportError, match="the `wandb` package is not installed"):
        MetricsLogger(tmp_path / "w", wandb={"project": "p"})
    # A stand-in module (the real one is not installed here) records the calls the logger makes.
    calls = []
    run = types.SimpleNamespace(log=lambda values, step: calls.append(("log", values, step)),
                                finish=lambda: calls.append(("finish",)))
    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls.append(("init", kw)) or run
    monkeypatch.setitem(sys.modules, "wandb", fake)
    with MetricsLogger(tmp_path / "w", wandb={"project": "p"}, tensorboard=False) as logger:
        logger.log(2, {"a": 0.5, "b": math.nan})
    assert calls[0] == ("init", {"project": "p", "mode": "offline", "dir": str(tmp_path / "w")})
    assert calls[1][0] == "log" and calls[1][2] == 2 and calls[1][1]["a"] == 0.5
    assert calls[2] == ("finish",)
