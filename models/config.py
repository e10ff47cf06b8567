"""ModelConfig: one typed description of a Qwen2 / Qwen2.5 / Llama 3 decoder, read from an HF config.json.

Everything the Megatron builder and the HF <-> Megatron converter need, and nothing else. The supported
family is the "Llama recipe": pre-RMSNorm, SwiGLU MLP, rotary embeddings (rotate-half layout), GQA, no
linear biases except optional q/k/v biases (Qwen2), tied or untied input/output embeddings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# HF `architectures[0]` -> our family name. Qwen2.5 checkpoints use the Qwen2 classes.
SUPPORTED_ARCHITECTURES = {
    "Qwen2ForCausalLM": "qwen2",
    "LlamaForCausalLM": "llama",
}

# Megatron's llama3 RoPE scaling (RotaryEmbedding._apply_scaling) hard-codes these; other values would
# silently compute different frequencies, so they are refused instead.
_MEGATRON_LLAMA3_ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192}


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Shapes and numerics of one decoder-only model (global sizes, before any TP/PP split)."""

    architecture: str                 # "qwen2" | "llama"
    vocab_size: int                   # real vocabulary (HF embedding rows); padding for TP is added later
    hidden_size: int
    ffn_hidden_size: int              # HF intermediate_size
    num_layers: int
    num_attention_heads: int
    num_query_groups: int             # HF num_key_value_heads (GQA)
    head_dim: int                     # HF head_dim or hidden_size // num_attention_heads
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling_factor: float | None  # llama3-style scaling factor, None when the model has none
    tie_word_embeddings: bool
    qkv_bias: bool                    # Qwen2: True (always); Llama: False (attention_bias=True is refused)
    params_dtype: str = "float32"     # storage dtype of the HF weights ("float32" | "bfloat16" | "float16")

    @classmethod
    def from_hf(cls, path: str | Path) -> ModelConfig:
        """Read `path/config.json` (or a config.json path). Unknown architectures raise ValueError listing
        the supported ones; features this builder does not implement (sliding window, MLP/output biases,
        non-llama3 RoPE scaling, non-SiLU activations) raise instead of being silently ignored."""
        p = Path(path)
        cfg_file = p / "config.json" if p.is_dir() else p
        if not cfg_file.is_file():
            raise ValueError(f"path={str(path)!r}: no config.json found")
        return cls.from_hf_dict(json.loads(cfg_file.read_text()))

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any]) -> ModelConfig:
        archs = hf.get("architectures") or []
        arch = archs[0] if archs else None
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ValueError(f"unsupported architecture {arch!r} (config.json 'architectures'); supported: "
                             f"{sorted(SUPPORTED_ARCHITECTURES)}")
        family = SUPPORTED_ARCHITECTURES[arch]
        if hf.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act={hf['hidden_act']!r} is not supported; allowed: ['silu']")
        if family == "qwen2" and hf.get("use_sliding_window", False):
            raise ValueError("use_sliding_window=True is not supported (full attention only)")
        if family == "llama" and hf.get("mlp_bias", False):
            raise ValueError("mlp_bias=True is not supported (Llama 3 / Qwen2 have no MLP biases)")
        if family == "llama" and hf.get("attention_bias", False):
            # refused here, not at load time: HF's Llama then also has an o_proj bias, which these layers lack
            raise ValueError("attention_bias=True is not supported for Llama (it adds an o_proj bias; Llama 3 "
                             "has no attention biases)")

        heads = int(hf["num_attention_heads"])
        hidden = int(hf["hidden_size"])
        head_dim = int(hf.get("head_dim") or hidden // heads)
        rope_theta, scaling = _rope(hf)
        qkv_bias = family == "qwen2"  # Qwen2 always biases q/k/v; a Llama with biases is refused above
        dtype = str(hf.get("torch_dtype") or hf.get("dtype") or "float32")
        return cls(
            architecture=family,
            vocab_size=int(hf["vocab_size"]),
            hidden_size=hidden,
            ffn_hidden_size=int(hf["intermediate_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_attention_heads=heads,
            num_query_groups=int(hf.get("num_key_value_heads") or heads),
            head_dim=head_dim,
            max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling_factor=scaling,
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            qkv_bias=qkv_bias,
            params_dtype=dtype,
        )

    def check_parallel(self, *, tp: int, pp: int = 1) -> None:
        """ValueError (naming both numbers) if this model cannot be split TP x PP ways."""
        if self.num_attention_heads % tp:
            raise ValueError(f"tensor parallel size {tp} does not divide num_attention_heads="
                             f"{self.num_attention_heads}")
        if self.num_query_groups % tp:
            raise ValueError(f"tensor parallel size {tp} does not divide num_query_groups (KV heads)="
                             f"{self.num_query_groups}")
        if self.ffn_hidden_size % tp:
            raise ValueError(f"tensor parallel size {tp} does not divide ffn_hidden_size={self.ffn_hidden_size}")
        if self.num_layers % pp:
            raise ValueError(f"pipeline parallel size {pp} does not divide num_layers={self.num_layers}")

    def padded_vocab_size(self, tp: int) -> int:
        """Vocabulary rows in Megatron: the smallest multiple of `tp` >= vocab_size (equal contiguous shards
        per rank). The extra rows are zero in the weights and masked to -inf in logits / log-probs."""
        return -(-self.vocab_size // tp) * tp

    def to_hf_dict(self) -> dict[str, Any]:
        """config.json for export (long-standing HF layout, top-level rope_theta)."""
        arch_class = {v: k for k, v in SUPPORTED_ARCHITECTURES.items()}[self.architecture]
        out: dict[str, Any] = {
            "architectures": [arch_class],
            "model_type": self.architecture,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.ffn_hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_query_groups,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": self.params_dtype,
            "use_cache": True,
        }
        if self.rope_scaling_factor is not None:
            out["rope_scaling"] = {"rope_type": "llama3", "factor": self.rope_scaling_factor,
                                   **_MEGATRON_LLAMA3_ROPE}
        if self.architecture == "llama":
            out.update(attention_bias=self.qkv_bias, mlp_bias=False)
        else:
            out.update(use_sliding_window=False, sliding_window=None)
        return out


def _rope(hf: dict[str, Any]) -> tuple[float, float | None]:
    """(theta, llama3 scaling factor or None) from either the classic layout (rope_theta + rope_scaling)
    or transformers 5's `rope_parameters`."""
    params = hf.get("rope_parameters") or {}
    theta = hf.get("rope_theta", params.get("rope_theta", 10000.0))
    scaling = hf.get("rope_scaling") or (params if params.get("rope_type", "default") != "default" else None)
    if not scaling:
        return float(theta), None
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "default":
        return float(theta), None
    if kind != "llama3":
        raise ValueError(f"rope scaling type {kind!r} is not supported; allowed: ['llama3'] or none")
    for key, want in _MEGATRON_LLAMA3_ROPE.items():
        if float(scaling.get(key, want)) != want:
            raise ValueError(f"llama3 rope scaling with {key}={scaling.get(key)} is not supported "
                             f"(Megatron's implementation fixes {key}={want})")
    return float(theta), float(scaling.get("factor", 8.0))
