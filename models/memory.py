"""ActivationMemory: how a model keeps what backward needs, through megatron-core's own TransformerConfig.

* Recompute (activation checkpointing). `full`: each checkpointed transformer layer keeps only its input and
  recomputes the rest in backward (`uniform`: every `recompute_num_layers` consecutive layers form one
  checkpointed unit; `block`: the first `recompute_num_layers` layers of each pipeline stage are checkpointed,
  the rest keep everything). `selective`: only the named sub-modules are recomputed (`core_attn`, `mlp`).
  Recompute reruns the same kernels on the same inputs, so results are unchanged (bitwise with deterministic
  kernels; tests/models/test_activation_memory.py).
* Sequence parallelism: outside the tensor-parallel GEMMs (norms, residual adds, dropout) each TP rank holds
  1/tp of the tokens instead of all of them; the all-reduces of TP become all-gathers + reduce-scatters of
  the same volume. Only meaningful with tp > 1 (at tp = 1 it is off, as Megatron-LM does). Packed token
  counts are then padded to a multiple of tp (models/logprobs.py).
"""

from __future__ import annotations

from dataclasses import dataclass

RECOMPUTE = ("none", "full", "selective")
RECOMPUTE_METHODS = ("uniform", "block")
# Sub-modules megatron-core can recompute selectively in a dense (non-MoE, non-MLA) model with the local
# layer spec. Not "layernorm": megatron-core 0.16.1's CheckpointWithoutOutput sets `fp8 = fp8 is not None`
# (True for its default False) and then calls Transformer Engine's FP8 state, a NameError without TE.
RECOMPUTE_MODULES = ("core_attn", "mlp")


@dataclass(frozen=True)
class ActivationMemory:
    recompute: str = "none"
    recompute_method: str = "uniform"
    recompute_num_layers: int = 1
    recompute_modules: tuple[str, ...] = ("core_attn",)
    sequence_parallel: bool = False

    def __post_init__(self) -> None:
        checks = (("recompute", self.recompute, RECOMPUTE), ("recompute_method", self.recompute_method,
                                                              RECOMPUTE_METHODS))
        for key, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"{key}={value!r} is not allowed; allowed: {list(allowed)}")
        if not isinstance(self.recompute_num_layers, int) or self.recompute_num_layers < 1:
            raise ValueError(f"recompute_num_layers must be an integer >= 1, got {self.recompute_num_layers!r}")
        bad = [m for m in self.recompute_modules if m not in RECOMPUTE_MODULES]
        if bad or (self.recompute == "selective" and not self.recompute_modules):
            raise ValueError(f"recompute_modules={list(self.recompute_modules)!r}: choose one or more of "
                             f"{list(RECOMPUTE_MODULES)}")

    def transformer_kwargs(self, tp: int) -> dict:
        """The TransformerConfig fields this sets, at tensor-parallel size `tp`."""
        kwargs: dict = {"sequence_parallel": self.sequence_parallel and tp > 1}
        if self.recompute == "full":
            kwargs.update(recompute_granularity="full", recompute_method=self.recompute_method,
                          recompute_num_layers=self.recompute_num_layers)
        elif self.recompute == "selective":
            kwargs.update(recompute_granularity="selective", recompute_modules=list(self.recompute_modules))
        return kwargs
