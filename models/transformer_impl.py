"""The one switch between Megatron's local layers and Transformer Engine's (`model.transformer_impl`).

  local               megatron-core's local modules + our core attention (models/spec.py): the only choice
                      on CPU, and on CUDA without Transformer Engine.
  transformer_engine  megatron-core's own TE layer spec (`get_gpt_layer_with_transformer_engine_spec`):
                      TELayerNormColumnParallelLinear (the pre-attention / pre-MLP RMSNorm fused into the
                      QKV / fc1 GEMM), TEDotProductAttention (TE picks flash / cuDNN fused attention, THD
                      packed sequences with cu_seqlens), TERowParallelLinear, TENorm for the final norm; with
                      TE's fused RoPE and Megatron's fused SwiGLU (transformer_config's fusion flags).
  auto                transformer_engine on CUDA when it imports, local otherwise (the default).

Why the weight names change: TE's fused norm-linear owns the norm weight, so HF's input_layernorm lives at
`self_attention.linear_qkv.layer_norm_weight` and post_attention_layernorm at `mlp.linear_fc1.layer_norm_weight`
(models/weight_names.py: `norm_names`). Everything else (QKV/fc1 layouts, TP split) is the same, so HF import,
export and the vLLM refit walk one table for both. A checkpoint records the implementation it was saved with:
its parameter names are the implementation's.
"""

from __future__ import annotations

import logging

TRANSFORMER_IMPLS = ("auto", "local", "transformer_engine")
_log = logging.getLogger(__name__)
_logged: set[str] = set()


def transformer_engine_available() -> bool:
    """Whether Transformer Engine's PyTorch API imports (OSError: a wheel whose CUDA libraries do not load)."""
    try:
        import transformer_engine.pytorch  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def resolve_transformer_impl(requested: str, device_type: str) -> str:
    """`requested` (a model.transformer_impl value) -> "local" | "transformer_engine" for a model on
    `device_type`; the resolved choice is logged once per process."""
    if requested not in TRANSFORMER_IMPLS:
        raise ValueError(f"model.transformer_impl={requested!r} is not allowed; allowed: {list(TRANSFORMER_IMPLS)}")
    if requested == "local":
        resolved = "local"
    elif device_type != "cuda":
        if requested == "transformer_engine":
            raise ValueError(f"model.transformer_impl='transformer_engine' needs a CUDA device, this model is on "
                             f"{device_type!r}; allowed here: 'local' or 'auto' (which picks local)")
        resolved = "local"
    elif transformer_engine_available():
        resolved = "transformer_engine"
    elif requested == "transformer_engine":
        raise ValueError("model.transformer_impl='transformer_engine' but transformer_engine does not import: "
                         "install the GPU extra (pip install 'primeflow[gpu]', which brings "
                         "transformer-engine[pytorch]) or set model.transformer_impl=local (or auto)")
    else:
        resolved = "local"
    if resolved not in _logged:
        _logged.add(resolved)
        _log.info("transformer layers: %s (model.transformer_impl=%s, device %s)", resolved, requested,
                  device_type)
    return resolved


def te_layer_spec():
    """megatron-core's TE TransformerLayer spec for this architecture (dense SwiGLU MLP, no QK norm)."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

    return get_gpt_layer_with_transformer_engine_spec(num_experts=None, moe_grouped_gemm=False, qk_layernorm=False)


def te_final_norm() -> type:
    from megatron.core.extensions.transformer_engine import TENorm

    return TENorm
