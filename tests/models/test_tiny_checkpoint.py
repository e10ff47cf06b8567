"""make_tiny_checkpoint: loads in transformers with every tensor used, deterministic per seed, tokenizer and
chat template as documented, overrides validated, and real vLLM greedy decoding equals transformers'."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from primeflow.models import allowed_overrides, make_tiny_checkpoint
from primeflow.models.tiny import CHAT_TEMPLATE, ENDOFTEXT_ID, IM_END_ID, IM_START_ID
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

VARIANTS = [
    pytest.param("qwen2", False, id="qwen2-untied"),
    pytest.param("qwen2", True, id="qwen2-tied"),
    pytest.param("llama", False, id="llama-untied"),
    pytest.param("llama", True, id="llama-tied"),
]


def _load_hf(path: Path):
    model, info = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, output_loading_info=True)
    return model.eval(), info


@pytest.mark.parametrize("architecture,tied", VARIANTS)
def test_loads_in_transformers_with_every_tensor(tmp_path, seed, architecture, tied):
    ckpt = make_tiny_checkpoint(tmp_path / "ckpt", seed=seed, architecture=architecture, tie_word_embeddings=tied)
    model, info = _load_hf(ckpt)
    # Nothing missing (would be silently random-initialised) and nothing unused.
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    stored = load_file(str(ckpt / "model.safetensors"))
    params = dict(model.named_parameters())
    for name, tensor in stored.items():
        assert torch.equal(params[name].detach(), tensor), name
    assert ("lm_head.weight" in stored) == (not tied)
    if tied:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    else:
        assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)

    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["hidden_size"] // cfg["num_attention_heads"] == 64  # vLLM CPU attention needs it
    ids_BT = torch.randint(0, cfg["vocab_size"], (2, 17), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        logits_BTV = model(ids_BT).logits
    assert logits_BTV.shape == (2, 17, cfg["vocab_size"]) and logits_BTV.dtype == torch.float32
    assert torch.isfinite(logits_BTV).all()
    # The scale the init promises (docstring of tiny._random_weights): clear greedy winners, no saturation.
    assert 0.5 < logits_BTV.std().item() < 8.0


def _file_bytes(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_same_seed_same_bytes(tmp_path):
    a = _file_bytes(make_tiny_checkpoint(tmp_path / "a", seed=3, num_hidden_layers=3))
    b = _file_bytes(make_tiny_checkpoint(tmp_path / "b", seed=3, num_hidden_layers=3))
    assert set(a) == {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                      "tokenizer_config.json", "special_tokens_map.json"}
    for name in a:
        assert a[name] == b[name], f"{name} differs between two writes with the same seed"


def test_different_seeds_differ(tmp_path):
    a = load_file(str(make_tiny_checkpoint(tmp_path / "a", seed=0) / "model.safetensors"))
    b = load_file(str(make_tiny_checkpoint(tmp_path / "b", seed=1) / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].shape == b[name].shape and not torch.equal(a[name], b[name]), name
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()


def test_overrides_reach_config_and_weights(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path / "c", seed=0, num_hidden_layers=3, intermediate_size=640,
                                rope_theta=12345.0, dtype="bfloat16", max_position_embeddings=512)
    cfg = json.loads((ckpt / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["intermediate_size"], cfg["rope_theta"]) == (3, 640, 12345.0)
    stored = load_file(str(ckpt / "model.safetensors"))
    assert {t.dtype for t in stored.values()} == {torch.bfloat16}
    assert stored["model.layers.2.mlp.gate_proj.weight"].shape == (640, 256)
    model, info = _load_hf(ckpt)
    assert not info["missing_keys"] and len(model.model.layers) == 3
    assert model.config.rope_parameters["rope_theta"] == 12345.0


def test_tokenizer_and_chat_template(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path / "t", seed=0, vocab_size=300)
    tok = AutoTokenizer.from_pretrained(str(ckpt))
    assert len(tok) == 300
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token_id) == ("<|endoftext|>", ENDOFTEXT_ID, ENDOFTEXT_ID)
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [IM_START_ID, IM_END_ID]

    text = "12+34=46, 7*8-5 = 51; Ünïcode ✓\n\tTabs"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == list(text.encode("utf-8")), "byte-level: token id must equal the byte value"
    assert tok.decode(ids) == text

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                        "<|im_start|>assistant\n")
    assert tok.chat_template == CHAT_TEMPLATE
    rendered_ids = tok(rendered, add_special_tokens=False)["input_ids"]
    assert rendered_ids.count(IM_START_ID) == 3 and rendered_ids.count(IM_END_ID) == 2
    # Every id the model can emit decodes (padding ids are named reserved tokens, not holes).
    assert tok.decode([299], skip_special_tokens=False) == "<|reserved_40|>"

    gen = json.loads((ckpt / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [IM_END_ID, ENDOFTEXT_ID]


def test_bad_arguments_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match=r"num_layers.*allowed keys.*num_hidden_layers"):
        make_tiny_checkpoint(tmp_path / "x", num_layers=4)
    with pytest.raises(ValueError, match="attention_bias"):  # a Llama key is not a Qwen2 key
        make_tiny_checkpoint(tmp_path / "x", attention_bias=True)
    with pytest.raises(ValueError, match=r"vocab_size=100.*259"):
        make_tiny_checkpoint(tmp_path / "x", vocab_size=100)
    with pytest.raises(ValueError, match=r"num_key_value_heads=3"):
        make_tiny_checkpoint(tmp_path / "x", num_key_value_heads=3)
    with pytest.raises(ValueError, match=r"architecture='gpt2'.*llama.*qwen2"):
        make_tiny_checkpoint(tmp_path / "x", architecture="gpt2")
    with pytest.raises(ValueError, match="dtype"):
        make_tiny_checkpoint(tmp_path / "x", dtype="int8")
    assert "num_hidden_layers" in allowed_overrides() and "mlp_bias" in allowed_overrides("llama")


def _hf_greedy(model, prompt: list[int], n: int) -> tuple[list[int], list[float]]:
    """Greedy decoding by full re-forward each step (no KV cache: independent of HF's generate path)."""
    ids, logps = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            logp_V = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].double(), dim=-1)
            nxt = int(logp_V.argmax())
            ids.append(nxt)
            logps.append(float(logp_V[nxt]))
    return ids[len(prompt):], logps


@pytest.mark.vllm
def test_vllm_greedy_equals_transformers(tiny_qwen2, tiny_llama_tied, vllm_greedy, tolerances):
    atol = tolerances.VLLM_FP32_LOGPROB_ATOL

    tok = AutoTokenizer.from_pretrained(str(tiny_qwen2))
    prompts = [tok.apply_chat_template([{"role": "user", "content": "What is 12+34?"}], tokenize=False,
                                       add_generation_prompt=True), "7*8-5="]
    prompt_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    n_new = 12
    ckpts = [tiny_qwen2, tiny_llama_tied]
    results = vllm_greedy([{"model": str(c), "prompts": prompt_ids, "max_tokens": n_new} for c in ckpts])
    for ckpt, per_prompt in zip(ckpts, results, strict=True):
        model, _ = _load_hf(ckpt)
        for prompt, got in zip(prompt_ids, per_prompt, strict=True):
            want_ids, want_logps = _hf_greedy(model, prompt, n_new)
            assert got["token_ids"] == want_ids, f"{ckpt.name}: vLLM {got['token_ids']} != HF {want_ids}"
            diff = max(abs(a - b) for a, b in zip(got["logprobs"], want_logps, strict=True))
            assert diff <= atol, f"{ckpt.name}: logprob diff {diff:.2e}"


@pytest.mark.vllm
@pytest.mark.slow
def test_smoke_module_runs(tmp_path, tolerances):
    """`python -m primeflow.models.smoke` (what `primeflow train` runs before the trainer exists)."""

    proc = subprocess.run([sys.executable, "-m", "primeflow.models.smoke", str(tmp_path)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads((tmp_path / "smoke.json").read_text())
    assert metrics["n_samples"] == 6 and metrics["n_tokens"] > 0
    assert metrics["logprob_mismatch_max"] <= tolerances.VLLM_FP32_LOGPROB_ATOL, metrics
