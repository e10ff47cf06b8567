"""Program extraction from a code response (PRIME prime_code: the last ```python block, else everything)."""

from __future__ import annotations

_FENCE = "```"


def extract_code(response: str) -> str:
    """The content of the last ```python fenced block (to the next fence, or the end if it is unclosed).

    Falls back to the last plain ``` block, and to the whole response when there is no fence at all (PRIME
    treats an unfenced response as code).
    """
    if not isinstance(response, str):
        raise ValueError(f"response must be a str, got {type(response).__name__}")
    lower = response.lower()
    pos = max(lower.rfind(_FENCE + "python"), lower.rfind(_FENCE + "py\n"), lower.rfind(_FENCE + "python3"))
    if pos >= 0:
        body = response[pos + len(_FENCE) :]
        body = body.split("\n", 1)[1] if "\n" in body else ""
        return body.split(_FENCE, 1)[0]
    count = response.count(_FENCE)
    if count >= 2:
        # the last complete plain block: between the last two fences
        end = response.rfind(_FENCE)
        start = response.rfind(_FENCE, 0, end)
        body = response[start + len(_FENCE) : end]
        first_nl = body.find("\n")
        tag = body[:first_nl].strip() if first_nl >= 0 else "x"
        if tag == "" or tag.isidentifier():
            body = body[first_nl + 1 :]  # a language tag (```cpp would not run anyway)
        return body
    return response
