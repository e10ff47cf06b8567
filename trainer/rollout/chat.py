"""Chat prompts -> token ids with the tokenizer's own chat template (the one vLLM and the model were
built with), so rollout prompts look exactly like the model's training format."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Message = dict[str, str]


def _conversation(item: Any, index: int) -> list[Message]:
    if isinstance(item, str):
        return [{"role": "user", "content": item}]
    if not isinstance(item, Sequence) or not item:
        raise ValueError(f"messages_list[{index}] must be a non-empty list of {{'role', 'content'}} dicts or a "
                         f"string (one user turn), got {type(item).__name__}")
    for j, msg in enumerate(item):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) or not isinstance(
                msg.get("content"), str):
            raise ValueError(f"messages_list[{index}][{j}] must be a dict with string 'role' and 'content', "
                             f"got {msg!r}")
    return list(item)


def encode_chat(tokenizer, messages_list: Sequence[Sequence[Message] | str], *,
                add_generation_prompt: bool = True) -> list[list[int]]:
    """Token ids of each conversation rendered with `tokenizer`'s chat template.

    messages_list: one entry per prompt; an entry is a list of {"role", "content"} messages or a plain
    string (= one user message). add_generation_prompt appends the assistant header so the model answers.
    Raises ValueError when the tokenizer has no chat template or an entry is malformed (naming its index).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no chat_template; pass token ids to "
                         "RolloutEngine.generate directly or use a tokenizer with a template")
    if isinstance(messages_list, str) or not isinstance(messages_list, Sequence):
        raise ValueError("messages_list must be a list of conversations (each a list of messages or a string)")
    out: list[list[int]] = []
    for i, item in enumerate(messages_list):
        ids = tokenizer.apply_chat_template(_conversation(item, i), add_generation_prompt=add_generation_prompt,
                                            tokenize=True, return_dict=False)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # BatchEncoding from some tokenizer versions
            ids = ids["input_ids"]
        out.append([int(t) for t in ids])
    return out
