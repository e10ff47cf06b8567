"""Token ids for prompts (RL) and prompt+response pairs (SFT) through the tokenizer's chat template.

The chat template is rendered to text and the text is tokenized with ``add_special_tokens=False``, the
same two steps vLLM's chat path takes, so the ids the trainer sees are the ids vLLM would build (the
template already writes every special token; letting the tokenizer add a BOS again would double it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .records import PromptRecord


def _render(tokenizer: Any, messages: list[dict], *, add_generation_prompt: bool, what: str) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{what}: the tokenizer has no chat_template (a chat model's tokenizer is needed)")
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    if not isinstance(text, str):
        raise TypeError(f"{what}: apply_chat_template(tokenize=False) returned {type(text).__name__}, not str")
    return text


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_ids(tokenizer: Any, record: PromptRecord) -> list[int]:
    """The prompt's token ids: chat template with ``add_generation_prompt=True``."""
    text = _render(tokenizer, record.messages, add_generation_prompt=True, what=f"prompt {record.uid!r}")
    return _ids(tokenizer, text)


def encode_prompts(tokenizer: Any, records: Sequence[PromptRecord], *, max_prompt_len: int) -> list[list[int]]:
    """Token ids of each record's prompt; a prompt longer than ``max_prompt_len`` raises ValueError naming
    its uid and both lengths (PRIME's RLHFDataset uses truncation='error' too; use ``drop_long_prompts``
    once at load time to leave such prompts out instead)."""
    if not isinstance(max_prompt_len, int) or max_prompt_len < 1:
        raise ValueError(f"max_prompt_len must be an int >= 1, got {max_prompt_len!r}")
    out = []
    for rec in records:
        ids = prompt_ids(tokenizer, rec)
        if len(ids) > max_prompt_len:
            raise ValueError(f"prompt {rec.uid!r} is {len(ids)} tokens long, more than max_prompt_len="
                             f"{max_prompt_len} (drop long prompts at load time or raise the limit)")
        out.append(ids)
    return out


def drop_long_prompts(tokenizer: Any, records: Sequence[PromptRecord], *,
                      max_prompt_len: int) -> tuple[list[PromptRecord], list[tuple[str, int]]]:
    """(records whose prompt fits, [(uid, length) of those that do not]) — PRIME's filter_prompts=True."""
    kept, dropped = [], []
    for rec in records:
        n = len(prompt_ids(tokenizer, rec))
        if n <= max_prompt_len:
            kept.append(rec)
        else:
            dropped.append((rec.uid, n))
    return kept, dropped


def encode_sft_pair(tokenizer: Any, messages: list[dict], response: str, *,
                    max_len: int | None = None) -> tuple[list[int], int]:
    """(input ids of prompt + response + end-of-turn, prompt length) for SFT with a masked prompt.

    The full conversation is rendered with the assistant turn appended, and the prompt rendering (with
    the generation prompt) must be its exact prefix, so the loss covers the response and the template's
    end-of-turn marker (what vLLM stops on) and nothing of the prompt.
    """
    prompt = _render(tokenizer, messages, add_generation_prompt=True, what="sft pair")
    full = _render(tokenizer, [*messages, {"role": "assistant", "content": response}],
                   add_generation_prompt=False, what="sft pair")
    if not full.startswith(prompt):
        raise ValueError("the chat template's rendering of the prompt is not a prefix of the rendering with the "
                         "response; cannot mask the prompt exactly")
    ids_prompt = _ids(tokenizer, prompt)
    ids_full = _ids(tokenizer, full)
    if ids_full[:len(ids_prompt)] != ids_prompt:
        raise ValueError("prompt tokens change when the response is appended (a merge across the boundary)")
    # The template may end the turn with a newline after the end-of-turn token; keep the ids up to and
    # including the end-of-turn token only, so the model learns to emit it and stop.
    eot = _end_of_turn_id(tokenizer)
    tail = ids_full[len(ids_prompt):]
    if eot is not None and eot in tail:
        tail = tail[:tail.index(eot) + 1]
    ids = ids_prompt + tail
    if max_len is not None and len(ids) > max_len:
        raise ValueError(f"SFT example is {len(ids)} tokens, more than max_len={max_len}")
    return ids, len(ids_prompt)


def _end_of_turn_id(tokenizer: Any) -> int | None:
    for tok in ("<|im_end|>", "<|eot_id|>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != getattr(tokenizer, "unk_token_id", None) and tid >= 0:
            return tid
    return None
