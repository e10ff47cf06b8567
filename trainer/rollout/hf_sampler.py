"""Rollouts sampled with transformers' `generate` instead of vLLM: n responses per prompt at temperature 1
from the model's full distribution, each token with the sampler's log-probability.

What it is for: measuring the trainer side alone on a machine without vLLM (scripts/gpu_smoke.py on a bare
CUDA image), with responses a real model sampled and log-probs a real sampler computed, so the trainer's
old log-probs can be compared with them there (the `logprob_mismatch` metric). It is not a production
backend: one prompt at a time (n sequences in one `generate` call), no continuous batching, and the logits
of every generated position are held until the call ends ([n, max_tokens, V] floats).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SampledResponses:
    """Row i is the i-th response; rows [p*n, (p+1)*n) belong to prompt p (the trainer's group layout)."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    logprobs: list[list[float]]     # the sampler's log-probability of each response token
    finish_reasons: list[str]       # "stop": ends with an id of eos_ids; "length": max_tokens reached


def end_at_first_eos(tokens: Sequence[int], logprobs: Sequence[float], eos_ids: set[int]
                     ) -> tuple[list[int], list[float], str]:
    """The response up to and including its first EOS id ("stop"), or all of it ("length"): `generate`
    keeps emitting padding for sequences that finished before the others."""
    for i, token in enumerate(tokens):
        if token in eos_ids:
            return list(tokens[:i + 1]), list(logprobs[:i + 1]), "stop"
    return list(tokens), list(logprobs), "length"


def sample_responses(model, prompts: Sequence[Sequence[int]], *, n: int, max_tokens: int, eos_ids: set[int],
                     pad_id: int, seed: int) -> SampledResponses:
    """n responses of at most `max_tokens` tokens for each prompt, sampled from `model` (an HF causal LM)
    at temperature 1 with no top-k / top-p / penalties: the distribution the PPO ratio assumes. Seeds torch's
    global generator with `seed` (transformers samples from it)."""
    from transformers import GenerationConfig

    if n < 1 or max_tokens < 1:
        raise ValueError(f"n and max_tokens must be >= 1, got n={n}, max_tokens={max_tokens}")
    if not eos_ids:
        raise ValueError("eos_ids is empty: a response could never end with 'stop'")
    config = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_tokens,
                              num_return_sequences=n, output_logits=True, return_dict_in_generate=True,
                              pad_token_id=pad_id, eos_token_id=sorted(eos_ids))
    torch.manual_seed(seed)
    out = SampledResponses([], [], [], [])
    device = next(model.parameters()).device
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([list(prompt)], device=device)
            result = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
            new_NT = result.sequences[:, ids.shape[1]:]
            # the raw logits of each step (no processors are configured, so they are what was sampled from)
            logits_NTV = torch.stack(result.logits, dim=1)
            logits_NTV = logits_NTV.to(torch.promote_types(logits_NTV.dtype, torch.float32))  # bf16 -> fp32
            logp_NT = logits_NTV.log_softmax(-1).gather(-1, new_NT[..., None]).squeeze(-1)
            for tokens, logprobs in zip(new_NT.tolist(), logp_NT.tolist(), strict=True):  # one read per prompt
                tokens, logprobs, reason = end_at_first_eos(tokens, logprobs, eos_ids)
                out.prompt_ids.append(list(prompt))
                out.response_ids.append(tokens)
                out.logprobs.append(logprobs)
                out.finish_reasons.append(reason)
    return out
