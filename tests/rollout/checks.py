"""Assertions shared by the single-process and torchrun rollout tests (loaded by path via the `checks`
fixture). Each takes the JSON form of a RolloutBatch (rollout_child.batch_dict) and raises AssertionError."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from primeflow.trainer.rollout import RolloutBatch


def as_batch(d: dict) -> RolloutBatch:
    return RolloutBatch(**d)


def groups_contiguous_and_complete(d: dict, prompts: list[list[int]], n: int) -> None:
    """K samples per prompt, contiguous, each row carrying its prompt; one log-prob per response token."""
    b = as_batch(d)
    assert b.group_size == n
    assert len(b) == len(prompts) * n, f"{len(b)} rows for {len(prompts)} prompts x {n}"
    assert b.prompt_index == [i for i in range(len(prompts)) for _ in range(n)]
    for row in range(len(b)):
        assert b.prompt_ids[row] == prompts[b.prompt_index[row]], f"row {row} carries another prompt"
        assert len(b.response_ids[row]) >= 1, f"row {row} has an empty response"
        assert len(b.logprobs[row]) == len(b.response_ids[row])
        assert all(math.isfinite(x) and x <= 0.0 for x in b.logprobs[row]), f"row {row}: log-probs {b.logprobs[row]}"


def finish_and_masks(d: dict, stop_ids: set[int], max_tokens: int) -> dict[str, int]:
    """finish reasons agree with the tokens; padded() masks cover exactly the response, ending at the stop
    token. Returns how many rows finished each way."""
    b = as_batch(d)
    counts = {"stop": 0, "length": 0}
    for row, (resp, reason) in enumerate(zip(b.response_ids, b.finish_reasons, strict=True)):
        counts[reason] += 1
        assert len(resp) <= max_tokens
        assert not any(t in stop_ids for t in resp[:-1]), f"row {row}: a stop token before the end: {resp}"
        if reason == "stop":
            assert resp[-1] in stop_ids, f"row {row} finished 'stop' but ends with {resp[-1]} (stop ids {stop_ids})"
        else:
            assert reason == "length" and len(resp) == max_tokens and resp[-1] not in stop_ids, (row, reason, resp)
    pad = b.padded(pad_id=0)
    B, T = pad["input_ids"].shape
    assert pad["response_mask"].shape == (B, T - 1) and pad["vllm_logp"].shape == (B, T - 1)
    for row in range(B):
        P, R = len(b.prompt_ids[row]), len(b.response_ids[row])
        cols = pad["response_mask"][row].nonzero().flatten().tolist()
        # Column t scores token t+1: the response's tokens sit at P .. P+R-1, scored at P-1 .. P+R-2.
        assert cols == list(range(P - 1, P + R - 1)), f"row {row}: mask columns {cols[:3]}..{cols[-3:]}"
        assert pad["input_ids"][row, cols[-1] + 1].item() == b.response_ids[row][-1]
        assert pad["attention_mask"][row].sum().item() == P + R
        assert torch.equal(pad["vllm_logp"][row, P - 1:P + R - 1], torch.tensor(b.logprobs[row]))
        assert (pad["vllm_logp"][row][pad["response_mask"][row] == 0] == 0).all()
    return counts


def hf_greedy(ckpt: Path, prompts: list[list[int]], max_tokens: int, stop_ids: set[int]) -> list[list[int]]:
    """transformers greedy decoding by full re-forward (no KV cache), stopping after a stop id."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for prompt in prompts:
            ids = list(prompt)
            for _ in range(max_tokens):
                ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
                if ids[-1] in stop_ids:
                    break
            out.append(ids[len(prompt):])
    return out


def checkpoint_bytes(ckpt: Path, dtype_bytes: int | None = None) -> tuple[int, int]:
    """(bytes, tensor count) of the checkpoint's tensors as vLLM receives them (tied lm_head excluded)."""
    from safetensors import safe_open

    total = count = 0
    with safe_open(str(ckpt / "model.safetensors"), framework="pt") as h:
        for name in h.keys():
            t = h.get_slice(name)
            numel = math.prod(t.get_shape())
            total += numel * (dtype_bytes or 4)
            count += 1
    return total, count
