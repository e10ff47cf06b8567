"""bench/model_flops.py against independent counts: the parameters of a real transformers model and the
flops torch's FlopCounterMode sees in its forward pass."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]


def _model_flops():
    spec = importlib.util.spec_from_file_location("bench_model_flops", ROOT / "bench" / "model_flops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Grouped-query attention, head_dim != hidden / heads, untied head: every term of the count is exercised.
HF_CONFIG = {"hidden_size": 96, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
             "intermediate_size": 160, "num_hidden_layers": 3, "vocab_size": 301, "tie_word_embeddings": False,
             "max_position_embeddings": 256}


def _hf_model() -> torch.nn.Module:
    # eager attention: QK^T and AV are plain matmuls the counter sees (it does not count the CPU SDPA kernel);
    # they run over the full T x T scores, the convention model_flops follows (PaLM's).
    config = transformers.Qwen2Config(**HF_CONFIG, attn_implementation="eager")
    return transformers.Qwen2ForCausalLM(config).eval()


def test_matmul_params_equal_the_linear_weights_of_the_real_model():
    model = _hf_model()
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert _model_flops().matmul_params(HF_CONFIG) == linear


@pytest.mark.parametrize("batch,seq_len", [(1, 1), (2, 37), (3, 64)])
def test_forward_flops_equal_what_flop_counter_measures(batch, seq_len):
    model = _hf_model()
    ids = torch.randint(0, HF_CONFIG["vocab_size"], (batch, seq_len))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(ids, use_cache=False)
    expected = counter.get_total_flops()  # matmuls and attention; elementwise ops are not counted by either
    assert _model_flops().forward_flops(HF_CONFIG, batch * seq_len, seq_len) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("mode,ref_type,update,epochs,passes", [
    ("rloo", "freeze", "after", 1, 5),     # rollout + old log-probs + policy fwd/bwd
    ("rloo", "freeze", "after", 2, 8),     # a second PPO epoch: another fwd/bwd
    ("prime", "freeze", "after", 1, 9),    # + reference forward + PRM fwd/bwd
    ("prime", "policy", "after", 1, 8),    # the reference is the old log-probs: no extra forward
    ("prime", "freeze", "before", 1, 10),  # + scoring with the updated PRM
])
def test_forward_passes_per_step(mode, ref_type, update, epochs, passes):
    config = {"ppo": {"epochs": epochs}, "prime": {"mode": mode, "ref_type": ref_type}, "prm": {"update": update}}
    assert _model_flops().forward_passes(config) == passes
