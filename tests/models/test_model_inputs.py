"""Bad checkpoints and bad parallel layouts fail with ValueErrors that name the problem; config parsing of
real-world HF config variants (Qwen2.5 / Llama 3.1 layouts) is exact."""

from __future__ import annotations

import json

import pytest
import torch
from primeflow.models import ModelConfig, build_model, load_hf_checkpoint, make_tiny_checkpoint
from safetensors.torch import load_file, save_file


def _rewrite(ckpt, edit) -> None:
    tensors = load_file(str(ckpt / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(ckpt / "model.safetensors"))


@pytest.mark.parametrize("case,edit,message", [
    ("missing", lambda t: t.pop("model.layers.1.self_attn.k_proj.bias"),
     r"missing tensor\(s\) \['model.layers.1.self_attn.k_proj.bias'\]"),
    ("extra", lambda t: t.update({"model.layers.7.mlp.up_proj.weight": torch.zeros(2, 2)}),
     r"unexpected tensor\(s\) \['model.layers.7.mlp.up_proj.weight'\]"),
    ("shape", lambda t: t.update({"model.layers.0.mlp.down_proj.weight": torch.zeros(256, 575)}),
     r"'model.layers.0.mlp.down_proj.weight' has shape \[256, 575\], expected \[256, 576\]"),
])
def test_bad_checkpoint_names_the_tensor(world, tmp_path, case, edit, message):
    ckpt = make_tiny_checkpoint(tmp_path / case, seed=0)
    model = build_model(ModelConfig.from_hf(ckpt), role="policy")
    _rewrite(ckpt, edit)
    with pytest.raises(ValueError, match=message):
        load_hf_checkpoint(model, ckpt)


def test_tp_that_does_not_divide_heads_names_both_numbers(tiny_qwen2):
    cfg = ModelConfig.from_hf(tiny_qwen2)
    with pytest.raises(ValueError, match=r"tensor parallel size 3 does not divide num_attention_heads=4"):
        cfg.check_parallel(tp=3)
    with pytest.raises(ValueError, match=r"tensor parallel size 4 does not divide num_query_groups.*=2"):
        cfg.check_parallel(tp=4)
    with pytest.raises(ValueError, match=r"pipeline parallel size 3 does not divide num_layers=2"):
        cfg.check_parallel(tp=1, pp=3)
    cfg.check_parallel(tp=2, pp=2)
    assert cfg.padded_vocab_size(2) == 260 and cfg.padded_vocab_size(1) == 259


def test_unknown_architecture_lists_supported(tmp_path, tiny_qwen2):
    hf = json.loads((tiny_qwen2 / "config.json").read_text())
    hf["architectures"] = ["MistralForCausalLM"]
    with pytest.raises(ValueError, match=r"'MistralForCausalLM'.*\['LlamaForCausalLM', 'Qwen2ForCausalLM'\]"):
        ModelConfig.from_hf_dict(hf)
    with pytest.raises(ValueError, match="no config.json"):
        ModelConfig.from_hf(tmp_path)


def test_role_is_validated(world, tiny_qwen2):
    cfg = ModelConfig.from_hf(tiny_qwen2)
    with pytest.raises(ValueError, match=r"role='critic'.*\['policy', 'prm', 'ref'\]"):
        build_model(cfg, role="critic")
    ref = build_model(cfg, role="ref")
    assert not any(p.requires_grad for p in ref.parameters())


def test_real_world_config_layouts():
    """Qwen2.5-7B-Instruct and Llama-3.1-8B config.json fields (numbers as published) parse exactly."""
    qwen = {"architectures": ["Qwen2ForCausalLM"], "hidden_act": "silu", "hidden_size": 3584,
            "intermediate_size": 18944, "max_position_embeddings": 32768, "num_attention_heads": 28,
            "num_hidden_layers": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
            "sliding_window": 131072, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
            "use_sliding_window": False, "vocab_size": 152064}
    c = ModelConfig.from_hf_dict(qwen)
    assert (c.architecture, c.head_dim, c.num_query_groups, c.qkv_bias, c.rope_theta, c.params_dtype) == (
        "qwen2", 128, 4, True, 1e6, "bfloat16")
    llama = {"architectures": ["LlamaForCausalLM"], "attention_bias": False, "hidden_act": "silu",
             "hidden_size": 4096, "intermediate_size": 14336, "max_position_embeddings": 131072,
             "mlp_bias": False, "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
             "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "tie_word_embeddings": False, "vocab_size": 128256,
             "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                              "original_max_position_embeddings": 8192, "rope_type": "llama3"}}
    c = ModelConfig.from_hf_dict(llama)
    assert (c.architecture, c.qkv_bias, c.rope_scaling_factor, c.tie_word_embeddings) == ("llama", False, 8.0, False)
    with pytest.raises(ValueError, match="attention_bias=True is not supported for Llama"):
        ModelConfig.from_hf_dict({**llama, "attention_bias": True})
    with pytest.raises(ValueError, match="high_freq_factor"):
        ModelConfig.from_hf_dict({**llama, "rope_scaling": {**llama["rope_scaling"], "high_freq_factor": 2.0}})
    with pytest.raises(ValueError, match="rope scaling type 'yarn'"):
        ModelConfig.from_hf_dict({**llama, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
