"""GPU memory hand-off between vLLM and the trainer (rollout.sleep_between_steps).

vLLM sleeps while the trainer computes log-probs and updates the models, so training does not share the GPU
with vLLM's KV cache. The order matters:
  1. after the rollout: `sleep()` (level 1: vLLM's weights to host memory, KV cache dropped);
  2. refit: wake the *weights* only, stream the updated policy into them;
  3. release the trainer's cached allocator blocks (`torch.cuda.empty_cache()`), so that
  4. the KV cache, woken last, gets back the memory the training stages used.
Waking the KV cache before the refit would allocate it while the trainer's cached blocks still hold that
memory. Off (or on CPU, where vLLM has no sleep mode) the engine only tracks the state, so a wrong order
raises on every platform (generate and sync_weights check it).
"""

from __future__ import annotations

from typing import Protocol

import torch


class SleepingEngine(Protocol):
    def sleep(self, level: int = 1) -> None: ...
    def wake_up(self, parts: tuple[str, ...] = ...) -> None: ...
    def sync_weights(self, policy_model, *, bucket_mb: float): ...


def release_trainer_cache() -> None:
    """Give the trainer's cached (free but reserved) CUDA blocks back to the device; no-op on CPU."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def after_rollout(engine: SleepingEngine, *, enabled: bool) -> None:
    if enabled:
        engine.sleep(level=1)


def refit_and_wake(engine: SleepingEngine, policy_model, *, bucket_mb: float, enabled: bool):
    """Steps 2-4 above; returns sync_weights' RefitStats. The engine is fully awake afterwards."""
    if enabled:
        engine.wake_up(("weights",))
    stats = engine.sync_weights(policy_model, bucket_mb=bucket_mb)
    if enabled:
        release_trainer_cache()
        engine.wake_up(("kv_cache",))
    return stats
