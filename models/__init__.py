"""primeflow.models: Megatron-core models (Qwen2/Llama family), HF <-> Megatron checkpoints, tiny checkpoints.

Public: ModelConfig.from_hf, build_model, load_hf_checkpoint, export_hf_checkpoint, sequence_logprobs,
make_tiny_checkpoint. The Megatron-dependent names are imported lazily (on first attribute access) so that
`make_tiny_checkpoint`, `ModelConfig` and the smoke run do not pay for importing megatron-core.
"""

from __future__ import annotations

from importlib import import_module

from .config import ModelConfig
from .tiny import allowed_overrides, make_tiny_checkpoint

_LAZY = {
    "build_model": ".gpt",
    "PrimeGPTModel": ".gpt",
    "unwrap_model": ".gpt",
    "load_hf_checkpoint": ".hf_checkpoint",
    "export_hf_checkpoint": ".hf_checkpoint",
    "hf_state_dict": ".hf_checkpoint",
    "sequence_logprobs": ".logprobs",
    "enable_cpu_megatron": ".compat",
}

__all__ = ["ModelConfig", "allowed_overrides", "make_tiny_checkpoint", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
