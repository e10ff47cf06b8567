"""The model shapes `primeflow plan` sizes a config with: the same ModelConfig the trainer builds from.

`model.path` with a config.json is read as the trainer reads it; `model.path: ""` is the tiny default model
(make_tiny_checkpoint with model.tiny_overrides). A checkpoint that is not on this machine yet (planning a
7B run before downloading it) is looked up by name among the architectures below, and the plan says so;
`--model-config FILE` (an HF config.json) overrides both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from primeflow.models import ModelConfig

from ..config import Config, ConfigError

# Qwen2.5-7B / Qwen2.5-Math-7B (Eurus-2-7B-SFT is a Qwen2.5-Math-7B fine-tune): the config.json shapes.
_QWEN25_7B = {"architectures": ["Qwen2ForCausalLM"], "vocab_size": 152064, "hidden_size": 3584,
              "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
              "num_key_value_heads": 4, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
              "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
# name fragment of model.path (lower case) -> HF config.json contents
KNOWN_SHAPES = {"eurus-2-7b": _QWEN25_7B, "qwen2.5-math-7b": _QWEN25_7B, "qwen2.5-7b": _QWEN25_7B}


@dataclass(frozen=True)
class ModelShapes:
    model: ModelConfig
    source: str             # where the shapes came from, printed with the plan


def tiny_model_config(overrides: dict) -> ModelConfig:
    from primeflow.models import tiny

    architecture = overrides.get("architecture", "qwen2")
    params = tiny._resolve_config(tiny._check_arch(architecture),
                                  {k: v for k, v in overrides.items() if k != "architecture"})
    return ModelConfig.from_hf_dict(tiny._hf_config_dict(architecture, params))


def model_shapes(config: Config, model_config: str | Path | None = None) -> ModelShapes:
    """The shapes of config's model; ConfigError naming model.path when they cannot be found."""
    try:
        if model_config is not None:
            return ModelShapes(ModelConfig.from_hf(model_config), f"--model-config {model_config}")
        path = config.model.path
        if path == "":
            return ModelShapes(tiny_model_config(config.model.tiny_overrides),
                               "the tiny default model (model.path is empty)")
        if (Path(path) / "config.json").is_file() or (Path(path).is_file() and path.endswith(".json")):
            return ModelShapes(ModelConfig.from_hf(path), f"{path}/config.json")
    except ValueError as error:
        raise ConfigError(f"model.path: {error}") from None
    for fragment, hf in KNOWN_SHAPES.items():
        if fragment in Path(path).name.lower():
            return ModelShapes(ModelConfig.from_hf_dict(hf),
                               f"built-in {fragment} shapes ({path} is not on this machine)")
    raise ConfigError(f"model.path: {path!r} has no config.json and is not a known architecture "
                      f"({sorted(KNOWN_SHAPES)}); pass --model-config CONFIG.json")
