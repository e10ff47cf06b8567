"""Tiny random HF checkpoints (Qwen2 or Llama architecture) with a byte-level tokenizer, built offline.

Tests and the CPU default run need real checkpoints that transformers, vLLM and the Megatron loader all
read, but nothing may be downloaded here. `make_tiny_checkpoint` writes one in well under a second:

    config.json, generation_config.json, model.safetensors     (random weights, deterministic per seed)
    tokenizer.json, tokenizer_config.json (with a Qwen-style chat template), special_tokens_map.json

Tokenizer: byte-level BPE with no merges, so every byte is one token and token id == byte value for ids
0..255 (any text tokenizes: digits, + - * =, letters, punctuation, UTF-8). Then <|endoftext|> (eos and
pad), <|im_start|>, <|im_end|>, then `<|reserved_k|>` fillers up to the config's vocab_size, so every id the
model can emit decodes to something.

Weights are drawn by our own seeded generator (not transformers' initialisers, which change across
versions) with scales chosen so that logits have a spread of a few units: greedy decoding then has clear
winners, and vLLM-vs-transformers greedy comparisons do not hinge on near-ties. Norm weights and biases are
random too, so a loader that drops or transposes one of them changes the outputs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
ENDOFTEXT_ID, IM_START_ID, IM_END_ID = 256, 257, 258
N_BASE_TOKENS = 256 + len(SPECIAL_TOKENS)

# Qwen2.5-style ChatML template (no default system prompt, so rendered prompts stay short).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

ARCHITECTURES = {
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "llama": ("LlamaForCausalLM", "llama"),
}

# Defaults shared by both architectures (head_dim = 256 / 4 = 64: vLLM's CPU attention rejects 16).
_COMMON_DEFAULTS: dict[str, Any] = {
    "vocab_size": N_BASE_TOKENS,
    "hidden_size": 256,
    "intermediate_size": 576,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "dtype": "float32",
}
_ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    # Qwen2 always has q/k/v biases (no config key for it); a non-default theta checks it is read.
    "qwen2": {"rope_theta": 1000000.0},
    # Llama 3 style: no biases, theta 500000.
    "llama": {"rope_theta": 500000.0, "attention_bias": False, "mlp_bias": False},
}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def allowed_overrides(architecture: str = "qwen2") -> list[str]:
    """The HF config keys `make_tiny_checkpoint` accepts as overrides for `architecture`."""
    return sorted({**_COMMON_DEFAULTS, **_ARCH_DEFAULTS[_check_arch(architecture)]})


def _check_arch(architecture: str) -> str:
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture={architecture!r} is not supported; allowed: {sorted(ARCHITECTURES)}")
    return architecture


def _resolve_config(architecture: str, overrides: dict[str, Any]) -> dict[str, Any]:
    params = {**_COMMON_DEFAULTS, **_ARCH_DEFAULTS[architecture]}
    unknown = sorted(set(overrides) - set(params))
    if unknown:
        raise ValueError(f"make_tiny_checkpoint: unknown override(s) {unknown} for architecture "
                         f"{architecture!r}; allowed keys: {sorted(params)}")
    params.update(overrides)
    if params["vocab_size"] < N_BASE_TOKENS:
        raise ValueError(f"vocab_size={params['vocab_size']} is smaller than the tokenizer's "
                         f"{N_BASE_TOKENS} base tokens (256 bytes + {len(SPECIAL_TOKENS)} special)")
    if params["hidden_size"] % params["num_attention_heads"]:
        raise ValueError(f"hidden_size={params['hidden_size']} is not divisible by "
                         f"num_attention_heads={params['num_attention_heads']}")
    if params["num_attention_heads"] % params["num_key_value_heads"]:
        raise ValueError(f"num_attention_heads={params['num_attention_heads']} is not divisible by "
                         f"num_key_value_heads={params['num_key_value_heads']}")
    if params["dtype"] not in _DTYPES:
        raise ValueError(f"dtype={params['dtype']!r} is not supported; allowed: {sorted(_DTYPES)}")
    return params


def _hf_config_dict(architecture: str, p: dict[str, Any]) -> dict[str, Any]:
    """config.json contents in the long-standing HF layout (top-level rope_theta, as real Qwen2.5 and
    Llama 3 checkpoints ship it); transformers 5 and vLLM both read it."""
    arch_class, model_type = ARCHITECTURES[architecture]
    head_dim = p["hidden_size"] // p["num_attention_heads"]
    cfg: dict[str, Any] = {
        "architectures": [arch_class],
        "model_type": model_type,
        "vocab_size": p["vocab_size"],
        "hidden_size": p["hidden_size"],
        "intermediate_size": p["intermediate_size"],
        "num_hidden_layers": p["num_hidden_layers"],
        "num_attention_heads": p["num_attention_heads"],
        "num_key_value_heads": p["num_key_value_heads"],
        "head_dim": head_dim,
        "hidden_act": p["hidden_act"],
        "max_position_embeddings": p["max_position_embeddings"],
        "rms_norm_eps": p["rms_norm_eps"],
        "rope_theta": float(p["rope_theta"]),
        "tie_word_embeddings": bool(p["tie_word_embeddings"]),
        "initializer_range": 0.02,
        "attention_dropout": 0.0,
        "use_cache": True,
        "bos_token_id": ENDOFTEXT_ID,
        "eos_token_id": ENDOFTEXT_ID,
        # No pad_token_id here (real Qwen2.5 / Llama 3 configs have none): transformers would turn it into
        # nn.Embedding(padding_idx=...), which silently never trains that row -- and it is the EOS token.
        # The tokenizer and generation_config carry the pad token instead.
        "torch_dtype": p["dtype"],
    }
    if architecture == "qwen2":
        cfg.update(use_sliding_window=False, sliding_window=None, max_window_layers=p["num_hidden_layers"])
    else:
        cfg.update(attention_bias=bool(p["attention_bias"]), mlp_bias=bool(p["mlp_bias"]), pretraining_tp=1)
    return cfg


def _tensor_shapes(architecture: str, p: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """HF parameter names and shapes (the layout transformers' Qwen2/Llama modules and vLLM expect)."""
    H, V, F = p["hidden_size"], p["vocab_size"], p["intermediate_size"]
    d = H // p["num_attention_heads"]
    q_out, kv_out = p["num_attention_heads"] * d, p["num_key_value_heads"] * d
    qkv_bias = architecture == "qwen2" or p.get("attention_bias", False)
    mlp_bias = architecture == "llama" and p.get("mlp_bias", False)
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,)}
    if not p["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (V, H)
    for i in range(p["num_hidden_layers"]):
        pre = f"model.layers.{i}."
        shapes[pre + "input_layernorm.weight"] = (H,)
        shapes[pre + "post_attention_layernorm.weight"] = (H,)
        for name, out in (("q_proj", q_out), ("k_proj", kv_out), ("v_proj", kv_out)):
            shapes[pre + f"self_attn.{name}.weight"] = (out, H)
            if qkv_bias:
                shapes[pre + f"self_attn.{name}.bias"] = (out,)
        shapes[pre + "self_attn.o_proj.weight"] = (H, q_out)
        if architecture == "llama" and p.get("attention_bias", False):
            shapes[pre + "self_attn.o_proj.bias"] = (H,)
        for name, (o, i_) in (("gate_proj", (F, H)), ("up_proj", (F, H)), ("down_proj", (H, F))):
            shapes[pre + f"mlp.{name}.weight"] = (o, i_)
            if mlp_bias:
                shapes[pre + f"mlp.{name}.bias"] = (o,)
    return shapes


def _random_weights(shapes: dict[str, tuple[int, ...]], hidden: int, seed: int,
                    dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Draw every tensor from one generator in sorted-name order (so bytes depend only on seed + shapes).

    Scales: linear weights ~ N(0, 1/fan_in) keep activations O(1); norm weights ~ 1 + N(0, 0.1); biases
    ~ N(0, 0.1); embedding and lm_head ~ N(0, (2/sqrt(H))^2), so logits have std ~2 (peaked enough for
    unambiguous greedy tokens, flat enough that sampling explores)."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name in sorted(shapes):
        shape = shapes[name]
        x = torch.randn(shape, generator=gen, dtype=torch.float32)
        if name.endswith("norm.weight"):
            x = 1.0 + 0.1 * x
        elif name.endswith(".bias"):
            x = 0.1 * x
        elif name in ("model.embed_tokens.weight", "lm_head.weight"):
            x = x * (2.0 / math.sqrt(hidden))
        else:
            x = x / math.sqrt(shape[1])
        out[name] = x.to(dtype).contiguous()
    return out


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (the ByteLevel alphabet), keyed by byte value.

    Printable Latin-1 bytes map to themselves; the rest are shifted past 255 so no token is whitespace or
    a control character."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, shift = {}, 0
    for b in range(256):
        if b in keep:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + shift)
            shift += 1
    return mapping


def _build_tokenizer(vocab_size: int):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    specials = [*SPECIAL_TOKENS, *(f"<|reserved_{k}|>" for k in range(vocab_size - N_BASE_TOKENS))]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    assert tok.token_to_id("<|im_end|>") == IM_END_ID and tok.get_vocab_size() == vocab_size
    return tok, specials


def _tokenizer_config(specials: list[str], max_len: int) -> dict[str, Any]:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": {
            str(N_BASE_TOKENS - len(SPECIAL_TOKENS) + k): {
                "content": s, "lstrip": False, "normalized": False, "rstrip": False,
                "single_word": False, "special": True,
            } for k, s in enumerate(specials)
        },
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_len,
        "chat_template": CHAT_TEMPLATE,
    }


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def make_tiny_checkpoint(path: str | Path, *, seed: int = 0, architecture: str = "qwen2",
                         **overrides: Any) -> Path:
    """Write a random HF checkpoint + byte-level tokenizer with a ChatML template to `path`; return it.

    `architecture`: "qwen2" (default; q/k/v biases) or "llama" (Llama 3 style, no biases).
    `overrides`: HF config keys (see `allowed_overrides()`), e.g. `num_hidden_layers=4`,
    `tie_word_embeddings=True`, `vocab_size=320` (extra ids become `<|reserved_k|>` tokens),
    `dtype="bfloat16"` (storage dtype of the weights). Same seed and overrides -> identical bytes.
    """
    from safetensors.torch import save_file

    architecture = _check_arch(architecture)
    if not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {type(seed).__name__}")
    p = _resolve_config(architecture, overrides)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)

    _write_json(out / "config.json", _hf_config_dict(architecture, p))
    _write_json(out / "generation_config.json", {
        "bos_token_id": ENDOFTEXT_ID,
        # Chat turns end with <|im_end|>; raw text ends with <|endoftext|> (as Qwen2.5-Instruct ships it).
        "eos_token_id": [IM_END_ID, ENDOFTEXT_ID],
        "pad_token_id": ENDOFTEXT_ID,
        "do_sample": False,
    })
    weights = _random_weights(_tensor_shapes(architecture, p), p["hidden_size"], seed, _DTYPES[p["dtype"]])
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})

    tok, specials = _build_tokenizer(p["vocab_size"])
    tok.save(str(out / "tokenizer.json"), pretty=True)
    _write_json(out / "tokenizer_config.json", _tokenizer_config(specials, p["max_position_embeddings"]))
    _write_json(out / "special_tokens_map.json", {
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    })
    return out
