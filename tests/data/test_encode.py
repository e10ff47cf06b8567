"""Prompt and SFT encoding through the tiny checkpoint's real tokenizer and chat template.

Reference: the tiny tokenizer is byte-level with id == byte value (models/tiny.py), and its ChatML
template is `<|im_start|>{role}\\n{content}<|im_end|>\\n` per message plus `<|im_start|>assistant\\n`, so the
expected ids are built here from bytes and the three special ids, independently of transformers."""

from __future__ import annotations

import random

import pytest
from primeflow.models.tiny import IM_END_ID, IM_START_ID, make_tiny_checkpoint
from primeflow.trainer.data import (
    PromptRecord,
    arithmetic_sft_pairs,
    arithmetic_task,
    drop_long_prompts,
    encode_prompts,
    encode_sft_pair,
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    path = make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=0)
    return AutoTokenizer.from_pretrained(path)


def _turn(role: str, content: str) -> list[int]:
    return [IM_START_ID, *f"{role}\n{content}".encode(), IM_END_ID, *b"\n"]


def _expected_prompt(messages: list[dict]) -> list[int]:
    ids = [i for m in messages for i in _turn(m["role"], m["content"])]
    return ids + [IM_START_ID, *b"assistant\n"]


def _random_text(rng: random.Random, n: int) -> str:
    alphabet = "0123456789+-*= abcXYZ\n\\{}é€😀"  # ASCII, 2-, 3- and 4-byte UTF-8
    return "".join(rng.choice(alphabet) for _ in range(n))


def test_prompt_ids_match_byte_reference(tokenizer, seed):
    rng = random.Random(seed)
    recs = []
    for i in range(20):
        msgs = [{"role": "user", "content": _random_text(rng, rng.randint(1, 40))}]
        if rng.random() < 0.5:
            msgs.insert(0, {"role": "system", "content": _random_text(rng, rng.randint(0, 20))})
        recs.append(PromptRecord(uid=f"r{i}", messages=msgs, ability="math", ground_truth="1", data_source="t"))
    ids = encode_prompts(tokenizer, recs, max_prompt_len=10_000)
    for rec, got in zip(recs, ids, strict=True):
        assert got == _expected_prompt(rec.messages)


def test_arithmetic_prompts_are_short(tokenizer):
    ids = encode_prompts(tokenizer, arithmetic_task(200, seed=1, digits=2), max_prompt_len=64)
    # "<|im_start|>user\n" (6) + "ab+cd=" (<= 6) + "<|im_end|>\n" (2) + "<|im_start|>assistant\n" (11)
    assert max(len(x) for x in ids) <= 25


def test_too_long_prompt_names_uid_and_lengths(tokenizer):
    recs = arithmetic_task(3, seed=2)
    n = len(encode_prompts(tokenizer, recs[:1], max_prompt_len=1000)[0])
    assert encode_prompts(tokenizer, recs[:1], max_prompt_len=n)[0]  # the limit itself is allowed
    with pytest.raises(ValueError, match=rf"prompt 'arith:2:0' is {n} tokens long, more than max_prompt_len={n - 1}"):
        encode_prompts(tokenizer, recs, max_prompt_len=n - 1)
    lens = [len(x) for x in encode_prompts(tokenizer, recs, max_prompt_len=1000)]
    kept, dropped = drop_long_prompts(tokenizer, recs, max_prompt_len=min(lens))
    assert [r.uid for r in kept] == [r.uid for r, n_ in zip(recs, lens, strict=True) if n_ <= min(lens)]
    assert dropped == [(r.uid, n_) for r, n_ in zip(recs, lens, strict=True) if n_ > min(lens)]
    with pytest.raises(ValueError, match="max_prompt_len must be an int >= 1"):
        encode_prompts(tokenizer, recs, max_prompt_len=0)


def test_sft_pair_masks_prompt_and_ends_with_im_end(tokenizer, seed):
    pairs = arithmetic_sft_pairs(10, seed=seed, ops=("+", "*"), n_operands=(2, 3), show_work=True)
    for messages, response in pairs:
        ids, n_prompt = encode_sft_pair(tokenizer, messages, response)
        assert ids[:n_prompt] == _expected_prompt(messages)
        assert ids[n_prompt:] == [*response.encode(), IM_END_ID]
    with pytest.raises(ValueError, match="more than max_len=5"):
        encode_sft_pair(tokenizer, pairs[0][0], pairs[0][1], max_len=5)


def test_tokenizer_without_chat_template(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = None
    with pytest.raises(ValueError, match="prompt 'arith:0:0': the tokenizer has no chat_template"):
        encode_prompts(tok, arithmetic_task(1, seed=0), max_prompt_len=100)


def test_training_loader_drops_long_prompts_at_load_and_refuses_an_empty_dataset(tokenizer, tmp_path):
    """A 1,627-token row among short ones once ended a run at the step that drew it (and again on every
    resume). The trainer's loader now holds only the prompts that fit, and says how many it dropped."""
    import json

    from primeflow.trainer.config import load_config
    from primeflow.trainer.run_setup import prompt_loader, prompt_records

    rows = [{"problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(40)]
    rows.insert(17, {"problem": "x " * 800 + "What is 1 + 1?", "answer": "2"})
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = load_config(None, [f"data.train_files=[{data}]", "data.max_prompt_len=128", "data.prompts_per_step=4"])
    records = prompt_records(config)
    logged: list[str] = []
    loader = prompt_loader(config, records, tokenizer, log=logged.append)
    long_uid = records[17].uid
    assert len(loader.records) == 40 and long_uid not in {r.uid for r in loader.records}
    assert len(logged) == 1 and "dropped 1 of 41 prompts longer than data.max_prompt_len=128" in logged[0]
    assert repr(long_uid) in logged[0]
    # every fetch of a whole epoch encodes within the limit (what the rollout stage does with each batch)
    while (batch := loader.fetch()) is not None:
        encode_prompts(tokenizer, batch, max_prompt_len=128)
    config.data.max_prompt_len = 5
    with pytest.raises(ValueError, match="every one of the 41 prompts is longer than data.max_prompt_len=5"):
        prompt_loader(config, records, tokenizer)
