"""Rollout pieces that need no vLLM: the padded tensor layout, mismatch / TIS, SamplingConfig and RolloutBatch
validation, encode_chat, and the weight-sync plan and stream in a one-process gloo world (the stream's TP>1
and PP>1 paths are checked under torchrun in test_rollout_multiproc.py)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from primeflow.models import make_tiny_checkpoint
from primeflow.trainer.rollout import RolloutBatch, SamplingConfig, encode_chat, logprob_mismatch, tis_weights


def _random_batch(g: torch.Generator, B: int = 6, n: int = 2) -> RolloutBatch:
    prompts, responses, lps, reasons = [], [], [], []
    for _ in range(B):
        P, R = int(torch.randint(1, 9, (1,), generator=g)), int(torch.randint(1, 7, (1,), generator=g))
        prompts.append(torch.randint(0, 300, (P,), generator=g).tolist())
        responses.append(torch.randint(0, 300, (R,), generator=g).tolist())
        lps.append((-torch.rand(R, generator=g) * 5).tolist())
        reasons.append("stop" if R % 2 else "length")
    return RolloutBatch(prompt_ids=prompts, response_ids=responses, logprobs=lps, finish_reasons=reasons,
                        group_size=n, prompt_index=[b // n for b in range(B)])


def test_padded_layout_matches_sequence_logprobs_columns(generator):
    batch = _random_batch(generator)
    pad = batch.padded(pad_id=7)
    ids, am, rm, vl = pad["input_ids"], pad["attention_mask"], pad["response_mask"], pad["vllm_logp"]
    B, T = ids.shape
    assert T == max(len(p) + len(r) for p, r in zip(batch.prompt_ids, batch.response_ids, strict=True))
    assert (ids.dtype, am.dtype, rm.dtype, vl.dtype) == (torch.int64, torch.int64, torch.float32, torch.float32)
    assert rm.shape == vl.shape == (B, T - 1)
    # A stand-in for sequence_logprobs: column t holds a value derived from token t+1 (the token it scores).
    scored = (ids[:, 1:] * 1000 + torch.arange(T - 1)).float()
    for b in range(B):
        P, R = len(batch.prompt_ids[b]), len(batch.response_ids[b])
        t = torch.arange(T - 1)
        assert torch.equal(rm[b], ((t >= P - 1) & (t < P + R - 1)).float())
        assert torch.equal(am[b], (torch.arange(T) < P + R).long())
        assert ids[b, :P].tolist() == batch.prompt_ids[b] and ids[b, P:P + R].tolist() == batch.response_ids[b]
        assert (ids[b, P + R:] == 7).all()
        picked = scored[b][rm[b] == 1]
        want = torch.tensor(batch.response_ids[b]) * 1000 + torch.arange(P - 1, P + R - 1)
        assert torch.equal(picked, want.float())
        assert torch.equal(vl[b][rm[b] == 1], torch.tensor(batch.logprobs[b]))
        assert (vl[b][rm[b] == 0] == 0).all()


def test_rollout_batch_rejects_inconsistent_rows():
    with pytest.raises(ValueError, match="response_ids has 1 rows"):
        RolloutBatch([[1], [2]], [[3]], [[-1.0], [-1.0]], ["stop", "stop"], 1, [0, 1])
    with pytest.raises(ValueError, match="row 0: 2 response ids but 1 log-probs"):
        RolloutBatch([[1]], [[3, 4]], [[-1.0]], ["stop"], 1, [0])
    with pytest.raises(ValueError, match="row 0 has an empty prompt"):
        RolloutBatch([[]], [[3]], [[-1.0]], ["stop"], 1, [0]).padded(0)


def test_logprob_mismatch_against_float64(generator):
    a, b = torch.randn(4, 9, generator=generator), torch.randn(4, 9, generator=generator)
    mask = torch.rand(4, 9, generator=generator) > 0.4
    mean, peak = logprob_mismatch(a, b, mask.float())
    diff = [abs(x - y) for x, y, m in zip(a.double().flatten().tolist(), b.double().flatten().tolist(),
                                          mask.flatten().tolist(), strict=True) if m]
    assert mean == pytest.approx(sum(diff) / len(diff), rel=1e-6) and peak == pytest.approx(max(diff), rel=1e-6)
    assert logprob_mismatch(a, b, mask) == (mean, peak)  # bool mask == 0/1 mask
    # Unmasked positions never count, whatever they hold.
    a2 = a.clone()
    a2[~mask] = 1e9
    assert logprob_mismatch(a2, b, mask) == (mean, peak)
    assert all(math.isnan(x) for x in logprob_mismatch(a, b, torch.zeros_like(mask)))
    with pytest.raises(ValueError, match="same shape"):
        logprob_mismatch(a, b[:, :5], mask)
    with pytest.raises(ValueError, match="only 0 and 1"):
        logprob_mismatch(a, b, mask.float() * 2)


def test_tis_weights_are_capped_ratios(generator):
    old = -torch.rand(3, 8, generator=generator) * 4
    vllm = -torch.rand(3, 8, generator=generator) * 4
    old[0, 0], vllm[0, 0] = 0.0, -500.0  # ratio e^500: must cap, not overflow
    mask = torch.ones(3, 8)
    mask[2, 5:] = 0
    old.requires_grad_(True)
    w = tis_weights(old, vllm, mask, cap=2.0)
    ratio = torch.exp(old.detach().double() - vllm.double())
    want = torch.where(mask.bool(), ratio.clamp(max=2.0), torch.zeros_like(ratio))
    assert w.dtype == torch.float32 and not w.requires_grad
    torch.testing.assert_close(w.double(), want, rtol=1e-6, atol=0)
    assert w[0, 0] == 2.0 and torch.isfinite(w).all() and (w[2, 5:] == 0).all()
    assert (w <= 2.0).all()
    for bad in (0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="cap must be"):
            tis_weights(old, vllm, mask, cap=bad)


@pytest.mark.parametrize("kwargs,match", [
    ({"temperature": -0.1}, "temperature"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"top_k": 0}, "top_k"), ({"max_tokens": 0}, "max_tokens"), ({"seed": 1.5}, "seed"),
    ({"stop_token_ids": [1, "a"]}, "stop_token_ids"),
])
def test_sampling_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingConfig(**kwargs)


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(make_tiny_checkpoint(tmp_path_factory.mktemp("tok"), seed=0)))


def test_encode_chat_renders_the_template(tiny_tokenizer):
    # make_tiny_checkpoint's tokenizer: byte b -> id b, <|im_start|> 257, <|im_end|> 258 (ChatML template).
    def turn(role: str, text: str) -> list[int]:
        return [257, *f"{role}\n{text}".encode(), 258, *b"\n"]

    header = [257, *b"assistant\n"]
    got = encode_chat(tiny_tokenizer, ["Hi 1+2?", [{"role": "system", "content": "Be terse."},
                                                   {"role": "user", "content": "x"}]])
    assert got == [turn("user", "Hi 1+2?") + header, turn("system", "Be terse.") + turn("user", "x") + header]
    assert encode_chat(tiny_tokenizer, ["Hi"], add_generation_prompt=False) == [turn("user", "Hi")]


def test_encode_chat_rejects_bad_input(tiny_tokenizer):
    with pytest.raises(ValueError, match=r"messages_list\[1\]\[0\] must be a dict"):
        encode_chat(tiny_tokenizer, ["ok", [{"role": "user"}]])
    with pytest.raises(ValueError, match=r"messages_list\[0\] must be a non-empty list"):
        encode_chat(tiny_tokenizer, [[]])
    with pytest.raises(ValueError, match="list of conversations"):
        encode_chat(tiny_tokenizer, "just a string")

    class NoTemplate:
        chat_template = None

    with pytest.raises(ValueError, match="no chat_template"):
        encode_chat(NoTemplate(), ["hi"])


# ---- weight-sync plan and stream, one process ---------------------------------------------------------------

def _dist_helper():
    path = Path(__file__).resolve().parents[1] / "models" / "dist.py"
    spec = importlib.util.spec_from_file_location("_primeflow_tests_models_dist", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def world():
    helper = _dist_helper()
    helper.init_parallel(tp=1, pp=1)
    yield
    helper.shutdown()


@pytest.mark.parametrize("overrides", [{}, {"architecture": "llama", "tie_word_embeddings": True, "vocab_size": 320}],
                         ids=["qwen2", "llama_tied"])
def test_stream_equals_export_and_respects_buckets(world, tmp_path, seed, overrides):
    from primeflow.models import ModelConfig, build_model, hf_state_dict, load_hf_checkpoint
    from primeflow.trainer.rollout.weight_sync import (
        check_plan,
        expected_tensors,
        global_plan,
        stream_hf_tensors,
    )
    from primeflow.models import unwrap_model as unwrap

    ckpt = make_tiny_checkpoint(tmp_path / "ckpt", seed=seed % 1000, **overrides)
    model = build_model(ModelConfig.from_hf(ckpt), role="policy")
    load_hf_checkpoint(model, ckpt)
    want = hf_state_dict(model)  # the export path (tested bitwise against the checkpoint in tests/models)
    expected = expected_tensors(ckpt)
    assert set(expected) == set(want)

    class Wrapper(torch.nn.Module):  # DDP-style wrapper: unwrap finds the model inside
        def __init__(self, m):
            super().__init__()
            self.module = m

    for bucket_bytes in (1, 2**17, 2**30):
        plan = global_plan(unwrap(Wrapper(model)), bucket_bytes)
        check_plan(plan, expected)
        for b in plan:  # a bucket is closed before it passes the size, unless it holds one parameter
            assert b.nbytes <= bucket_bytes or len(b.units) == 1
        counters = {"bytes": 0, "tensors": 0, "buckets": 0}
        got = dict(stream_hf_tensors(model, plan, counters))
        assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
        assert counters == {"bytes": sum(t.numel() * 4 for t in want.values()), "tensors": len(want),
                            "buckets": len(plan)}
        if bucket_bytes == 2**30:
            assert len(plan) == 1

    # The wire dtype is the engine's: fp32 weights reach a bf16 engine as their bf16 rounding, and the
    # bytes counted are bf16 bytes (half), whatever the bucket size.
    for bucket_bytes in (1, 2**17):
        plan = global_plan(model, bucket_bytes, wire_dtype=torch.bfloat16)
        check_plan(plan, expected)
        assert all(b.dtype == torch.bfloat16 for b in plan)
        counters = {"bytes": 0, "tensors": 0, "buckets": 0}
        got = dict(stream_hf_tensors(model, plan, counters))
        assert set(got) == set(want)
        assert all(got[k].dtype == torch.bfloat16 and torch.equal(got[k], want[k].to(torch.bfloat16)) for k in want)
        assert counters["bytes"] == sum(t.numel() * 2 for t in want.values())

    bad = dict(expected)
    bad["model.layers.0.mlp.up_proj.weight"] = (1, 2)
    with pytest.raises(ValueError, match=r"'model.layers.0.mlp.up_proj.weight' has shape \[\d+, 256\]"):
        check_plan(global_plan(model, 2**20), bad)
    with pytest.raises(ValueError, match="does not provide tensor 'model.layers.9.extra'"):
        check_plan(global_plan(model, 2**20), {**expected, "model.layers.9.extra": (1,)})
    with pytest.raises(ValueError, match="expected a primeflow PrimeGPTModel"):
        unwrap(torch.nn.Linear(2, 2))
