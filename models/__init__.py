"""primeflow.models: Megatron-core models (Qwen2/Llama family), HF <-> Megatron checkpoints, tiny checkpoints.

The Megatron-dependent parts are imported lazily (on first attribute access) so that `make_tiny_checkpoint`
and the smoke run do not pay for importing megatron-core.
"""

from .tiny import allowed_overrides, make_tiny_checkpoint

__all__ = ["allowed_overrides", "make_tiny_checkpoint"]
