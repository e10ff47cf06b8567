"""The vLLM <-> trainer memory hand-off order (rollout.sleep_between_steps), against the engine's own state
checks: sleep after the rollout; wake the weights, sync, release the trainer's cache, wake the KV cache."""

from __future__ import annotations

import pytest
from primeflow.trainer.rollout import handoff
from primeflow.trainer.rollout.engine import SLEEP_PARTS, RolloutEngine


class RecordingEngine:
    """RolloutEngine's state machine (its real sleep/wake_up and their checks) with vLLM replaced by a log."""

    def __init__(self):
        self.calls: list[str] = []
        self.engine = RolloutEngine.__new__(RolloutEngine)  # no vLLM: only the memory state is exercised
        self.engine._asleep, self.engine.on_gpu, self.engine.sleep_enabled = set(), False, True

    def sleep(self, level: int = 1) -> None:
        self.calls.append(f"sleep{level}")
        self.engine.sleep(level)

    def wake_up(self, parts=SLEEP_PARTS) -> None:
        self.calls.append("wake:" + "+".join(parts))
        self.engine.wake_up(parts)

    def sync_weights(self, policy_model, *, bucket_mb: float):
        assert "weights" not in self.engine.asleep_parts, "refit into sleeping weights"
        assert "kv_cache" in self.engine.asleep_parts, "KV cache woken before the trainer released its memory"
        self.calls.append("sync")
        return "stats"


def test_refit_wakes_weights_then_syncs_then_releases_then_wakes_kv(monkeypatch):
    engine = RecordingEngine()
    monkeypatch.setattr(handoff, "release_trainer_cache", lambda: engine.calls.append("release"))
    handoff.after_rollout(engine, enabled=True)
    assert engine.engine.asleep_parts == frozenset(SLEEP_PARTS)
    assert handoff.refit_and_wake(engine, object(), bucket_mb=1.0, enabled=True) == "stats"
    assert engine.calls == ["sleep1", "wake:weights", "sync", "release", "wake:kv_cache"]
    assert not engine.engine.asleep


def test_disabled_handoff_never_sleeps(monkeypatch):
    engine = RecordingEngine()
    monkeypatch.setattr(handoff, "release_trainer_cache", lambda: engine.calls.append("release"))
    handoff.after_rollout(engine, enabled=False)
    engine.engine._asleep = set()
    engine.sync_weights = lambda policy_model, bucket_mb: engine.calls.append("sync")
    handoff.refit_and_wake(engine, object(), bucket_mb=1.0, enabled=False)
    assert engine.calls == ["sync"]


def test_engine_state_checks():
    engine = RolloutEngine.__new__(RolloutEngine)
    engine._asleep, engine.on_gpu, engine.sleep_enabled, engine.llm = set(), False, True, object()
    engine.sleep()
    with pytest.raises(RuntimeError, match="weights are asleep"):
        engine.sync_weights(object())
    engine.wake_up(("weights",))
    with pytest.raises(RuntimeError, match=r"\['kv_cache'\] are asleep"):
        engine.generate([[1, 2]], 1, None)
    with pytest.raises(ValueError, match="allowed are non-empty subsets"):
        engine.wake_up(("optimizer",))
    engine.wake_up()
    assert not engine.asleep
