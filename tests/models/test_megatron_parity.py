"""Megatron GPTModel (build_model + load_hf_checkpoint) vs transformers on tiny random checkpoints, fp32.

TP=1 runs in this process (a gloo world of one); TP=2 / PP=2 / TP=2xPP=2 run under torchrun
(tests/models/mp_parity.py, marker `multiproc`). Both use the same checks (tests/models/parity.py):
logits, the fused log-prob head, sequence_logprobs on a left+right padded batch (packed THD), and
gradients of every tensor.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from primeflow.models import ModelConfig, build_model, load_hf_checkpoint, make_tiny_checkpoint

_HERE = Path(__file__).resolve().parent
VARIANTS = {
    "qwen2-untied-V259": dict(seed=5),
    "llama-tied-V320": dict(seed=6, architecture="llama", tie_word_embeddings=True, vocab_size=320),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def loaded(request, world, helper, tmp_path_factory):
    ckpt = make_tiny_checkpoint(tmp_path_factory.mktemp(request.param), **VARIANTS[request.param])
    parity = helper("parity")
    model, cfg = parity.build_loaded(ckpt)
    return model, parity.load_hf(ckpt), cfg, ckpt


@pytest.mark.parametrize("check", ["check_logits", "check_logprob_head", "check_sequence_logprobs",
                                   "check_gradients"])
def test_tp1_matches_transformers(loaded, helper, seed, check):
    model, hf, cfg, _ = loaded
    getattr(helper("parity"), check)(model, hf, cfg, seed)


def test_tp1_train_step_matches_transformers(world, helper, tiny_llama_tied, seed):
    parity = helper("parity")
    model, cfg = parity.build_loaded(tiny_llama_tied)
    parity.check_train_step(model, parity.load_hf(tiny_llama_tied), cfg, seed)


def test_checks_catch_a_wrong_model(world, helper, tiny_qwen2, seed):
    """The parity bar is tight enough to see a wrong RoPE theta and a 0.01 change of one q bias entry."""
    parity = helper("parity")
    hf = parity.load_hf(tiny_qwen2)
    cfg = dataclasses.replace(ModelConfig.from_hf(tiny_qwen2), rope_theta=10000.0)
    model = build_model(cfg, role="policy")
    load_hf_checkpoint(model, tiny_qwen2)
    with pytest.raises(AssertionError, match="logits rel err"):
        parity.check_logits(model, hf, cfg, seed)
    model, cfg = parity.build_loaded(tiny_qwen2)
    with torch.no_grad():
        model.decoder.layers[1].self_attention.linear_qkv.bias[5] += 0.01
    with pytest.raises(AssertionError, match="logits rel err"):
        parity.check_logits(model, hf, cfg, seed)


def test_bf16_params_not_worse_than_transformers_bf16(world, helper, tiny_qwen2, tolerances, seed):
    """bf16 weights: our log-probs may be at most ERROR_RATIO x further from the fp32 truth than
    transformers' own bf16 model (house rule: compare low precision against low precision)."""
    from primeflow.models import sequence_logprobs
    from transformers import AutoModelForCausalLM

    parity = helper("parity")
    cfg = ModelConfig.from_hf(tiny_qwen2)
    model = build_model(cfg, role="policy", params_dtype="bfloat16")
    load_hf_checkpoint(model, tiny_qwen2)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    hf_bf16 = AutoModelForCausalLM.from_pretrained(str(tiny_qwen2), dtype=torch.bfloat16).eval()
    ids, mask = parity.random_batch(cfg.vocab_size, seed, B=4, T=40)
    with torch.no_grad():
        ours = sequence_logprobs(model, ids, attention_mask=mask)
        truth = parity.hf_row_logprobs(parity.load_hf(tiny_qwen2), ids, mask)
        theirs = parity.hf_row_logprobs(hf_bf16, ids, mask)
    assert ours.dtype == torch.float32
    for stat in (torch.max, torch.mean):
        e_ours, e_theirs = stat((ours - truth).abs()).item(), stat((theirs - truth).abs()).item()
        assert e_ours <= tolerances.ERROR_RATIO * e_theirs, (stat.__name__, e_ours, e_theirs)


def test_llama3_rope_scaling_matches_transformers(world, helper, tmp_path, seed):
    """Llama 3.1-style `rope_scaling` (llama3, factor 8) reaches Megatron's RoPE: parity with transformers,
    and the same model without the scaling is detectably different (so the check covers it)."""
    parity = helper("parity")
    ckpt = make_tiny_checkpoint(tmp_path / "llama31", seed=7, architecture="llama", max_position_embeddings=16384)
    hf_cfg = json.loads((ckpt / "config.json").read_text())
    hf_cfg["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    (ckpt / "config.json").write_text(json.dumps(hf_cfg))
    model, cfg = parity.build_loaded(ckpt)
    hf = parity.load_hf(ckpt)
    assert cfg.rope_scaling_factor == 8.0
    parity.check_logits(model, hf, cfg, seed)
    unscaled = build_model(dataclasses.replace(cfg, rope_scaling_factor=None), role="policy")
    load_hf_checkpoint(unscaled, ckpt)
    with pytest.raises(AssertionError, match="logits rel err"):
        parity.check_logits(unscaled, hf, cfg, seed)


def test_uninitialised_build_loads_bitwise_like_a_randomly_initialised_one(loaded, helper):
    """The trainer builds its models with initialize=False (no random init of full matrices) and each rank
    reads only its slices of the file: every parameter must still come out exactly as when the weights were
    first randomly initialised and then overwritten by the checkpoint."""
    model, _, cfg, ckpt = loaded  # built with initialize=False
    reference, _ = helper("parity").build_loaded(ckpt, initialize=True)
    got, want = dict(model.named_parameters()), dict(reference.named_parameters())
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_loading_refuses_to_leave_a_parameter_unfilled(world, tiny_qwen2, monkeypatch):
    """An uninitialised (torch.empty) parameter the checkpoint does not fill would be garbage: it is an error."""
    from primeflow.models import hf_checkpoint

    targets = hf_checkpoint._megatron_targets
    monkeypatch.setattr(hf_checkpoint, "_megatron_targets",
                        lambda model, cfg: (t for t in targets(model, cfg) if "final_layernorm" not in t[0]))
    model = build_model(ModelConfig.from_hf(tiny_qwen2), role="policy", initialize=False)
    with pytest.raises(RuntimeError, match="not filled from the checkpoint.*final_layernorm"):
        load_hf_checkpoint(model, tiny_qwen2)
