"""primeflow.trainer.rollout: vLLM rollouts colocated in the torchrun job, and weight sync from Megatron.

Public: RolloutEngine (vLLM engine + generate + sync_weights + sleep/wake_up), RolloutBatch, RolloutGroup,
SamplingConfig, RefitStats, logprob_mismatch, tis_weights, encode_chat. RolloutEngine is imported lazily (first
attribute access) so that the data types and metrics do not import vLLM.
"""

from __future__ import annotations

from importlib import import_module

from .chat import encode_chat
from .metrics import logprob_mismatch, tis_weights
from .types import RefitStats, RolloutBatch, RolloutGroup, SamplingConfig

_LAZY = {"RolloutEngine": ".engine"}

__all__ = ["RefitStats", "RolloutBatch", "RolloutGroup", "SamplingConfig", "encode_chat", "logprob_mismatch",
           "tis_weights", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
