"""Which characters of a decoded response each response token produced: the bridge from per-token rewards
to spans of text (a written step). Tokenizers are not required to expose offsets for generated ids, so the
spans come from decoding: token by token when the pieces concatenate to the decoded text (byte-level and
most BPE vocabularies on ASCII), else by decoding growing prefixes (exact whenever decoding a prefix gives a
prefix of the text, e.g. a multi-byte character split over tokens counts towards the token that completes it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def token_char_spans(tokenizer: Any, ids: Sequence[int], text: str) -> list[tuple[int, int]]:
    """[start, end) character span in `text` of each token of `ids`, where `text` is
    ``tokenizer.decode(ids, skip_special_tokens=True)``; special tokens get an empty span. Raises ValueError
    when the ids do not decode to `text` (the spans would belong to another string)."""
    pieces = [tokenizer.decode([int(t)], skip_special_tokens=True) for t in ids]
    if "".join(pieces) == text:
        spans, pos = [], 0
        for piece in pieces:
            spans.append((pos, pos + len(piece)))
            pos += len(piece)
        return spans
    # O(len^2) decoding, only for the rare vocabularies whose single-token decodes do not concatenate
    spans, end = [], 0
    for k in range(len(ids)):
        prefix = tokenizer.decode([int(t) for t in ids[:k + 1]], skip_special_tokens=True)
        new_end = len(prefix) if text.startswith(prefix) else end  # a partial character: no text yet
        spans.append((end, max(end, new_end)))
        end = max(end, new_end)
    if end != len(text):
        raise ValueError(f"the {len(ids)} token ids decode to {end} characters of a {len(text)}-character text: "
                         f"they are not the ids of this response")
    return spans
