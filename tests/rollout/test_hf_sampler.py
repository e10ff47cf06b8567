"""Rollouts sampled with transformers (trainer/rollout/hf_sampler.py), the vLLM-free backend of
scripts/gpu_smoke.py.

The model runs in float64; transformers' sampling loop casts each step's logits to fp32 (what it samples
from and what `output_logits` returns), and the sampler's log_softmax runs in fp32. Against an independent
full-sequence float64 forward, with u = 2^-24 and z a row's logits: rounding z costs at most u max|z| on the
token's logit and on the log-sum-exp each (2 u max|z|), and the fp32 log_softmax (max, subtract, exp, sum
over V terms, log) about 6 u (max|z| + ln V) more; the test allows 8 u (max|z| + ln V) per token. An
off-by-one position or a processed (top-k / temperature) distribution is off by O(1).
EOS handling: a response ends at its first EOS id ("stop"), or has max_tokens tokens and none ("length").
"""

from __future__ import annotations

import math

import pytest
import torch
from primeflow.models import make_tiny_checkpoint
from primeflow.trainer.batch import build_train_batch
from primeflow.trainer.rollout.hf_sampler import end_at_first_eos, sample_responses

MAX_TOKENS = 8


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    ckpt = make_tiny_checkpoint(tmp_path_factory.mktemp("hf_sampler"), seed=5)
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float64).eval()
    assert next(model.parameters()).dtype == torch.float64
    return model


@pytest.fixture(scope="module")
def sampled(model):
    eos = set(range(0, model.config.vocab_size, 8))  # 1 id in 8: some rows stop, some run out
    prompts = [[3, 17, 42, 9], [101, 5], [7]]
    return prompts, eos, sample_responses(model, prompts, n=3, max_tokens=MAX_TOKENS, eos_ids=eos, pad_id=1,
                                          seed=0)


def test_rows_are_grouped_by_prompt_and_end_at_the_first_eos(sampled):
    prompts, eos, got = sampled
    assert got.prompt_ids == [p for p in prompts for _ in range(3)]
    assert set(got.finish_reasons) == {"stop", "length"}, got.finish_reasons  # both cases are exercised
    for tokens, logprobs, reason in zip(got.response_ids, got.logprobs, got.finish_reasons, strict=True):
        assert len(tokens) == len(logprobs) >= 1
        assert not any(t in eos for t in tokens[:-1])
        if reason == "stop":
            assert tokens[-1] in eos
        else:
            assert len(tokens) == MAX_TOKENS and tokens[-1] not in eos


def test_logprobs_are_the_models_at_each_sampled_token(model, sampled):
    _, _, got = sampled
    worst = 0.0
    for prompt, tokens, logprobs in zip(got.prompt_ids, got.response_ids, got.logprobs, strict=True):
        with torch.no_grad():
            logits = model(torch.tensor([prompt + tokens])).logits[0]
        z = logits[len(prompt) - 1:-1].double()
        want = z.log_softmax(-1).gather(-1, torch.tensor(tokens)[:, None])[:, 0]
        bound = 8 * 2.0**-24 * (z.abs().amax(-1) + math.log(z.shape[-1]))
        ratio = (torch.tensor(logprobs, dtype=torch.float64) - want).abs() / bound
        worst = max(worst, float(ratio.max()))
    assert worst <= 1.0, worst


def test_samples_build_a_train_batch(sampled):
    _, eos, got = sampled
    batch = build_train_batch(got.prompt_ids, got.response_ids, got.logprobs, got.finish_reasons,
                              [float(i % 2) for i in range(len(got.prompt_ids))], group_size=3, eos_ids=eos,
                              pad_id=1)
    assert batch.response_lens == [len(r) for r in got.response_ids]
    row = batch.vllm_logp[0, :batch.response_lens[0]]
    assert row.tolist() == got.logprobs[0]  # fp32 values (fp32 logits' log_softmax) stored in fp32: exact


def test_end_at_first_eos_and_bad_arguments(model):
    assert end_at_first_eos([5, 2, 9, 2], [-1.0, -2.0, -3.0, -4.0], {2}) == ([5, 2], [-1.0, -2.0], "stop")
    assert end_at_first_eos([5, 9], [-1.0, -2.0], {2}) == ([5, 9], [-1.0, -2.0], "length")
    with pytest.raises(ValueError, match="eos_ids is empty"):
        sample_responses(model, [[1]], n=1, max_tokens=2, eos_ids=set(), pad_id=0, seed=0)
    with pytest.raises(ValueError, match="n and max_tokens"):
        sample_responses(model, [[1]], n=0, max_tokens=2, eos_ids={2}, pad_id=0, seed=0)
