"""Final-answer extraction from a math response (PRIME prime_math style, hardened against reward hacking).

PRIME takes the content of the last ``\\boxed{}``/``\\fbox{}`` (brace matched), else falls back to the text
after "answer is"/"answer:"/"=" anywhere in the response. Those anywhere-fallbacks let a truncated trace
score on an expression in the middle of its reasoning (frameworks_landscape.md §5, UniRL PR #360), so here:

- the boxed answer is the last *complete* box; a response that ends inside an unclosed box has no answer;
- several boxes with different contents in the final paragraph ("\\boxed{2} or \\boxed{3}") are ambiguous,
  unless each earlier one is retracted before the next ("\\boxed{7} is wrong, let me redo. \\boxed{8}");
- the text fallbacks only look at the last non-empty line, and the "=" fallback only at a finished sentence;
- a prompt echo (chat-template markers, or the prompt text itself when given) is cut off before searching.

Everything here is linear-time string scanning (no regex with nested quantifiers), so it can run anywhere.
"""

from __future__ import annotations

import re
from itertools import pairwise

_BOX_COMMANDS = ("\\boxed", "\\fbox")
# Markers after which the model's own answer starts, if a decoded sample still contains the chat prompt.
_ASSISTANT_MARKERS = (
    "<|im_start|>assistant",
    "<|start_header_id|>assistant<|end_header_id|>",
    "<|assistant|>",
)
_ANSWER_PHRASE = re.compile(r"answers?\s*(?:is|are|:)\s*:?", re.IGNORECASE)
_IS_THE_ANSWER = re.compile(r"\s+is\s+(?:the|our|my)\s+(?:final\s+)?answer", re.IGNORECASE)
# Words that take back the box before them. A retracted box is not a candidate, so a self-correction has
# one answer; a box followed by "or", "also" or nothing is a hedge and the paragraph stays ambiguous.
_RETRACTION = re.compile(
    r"\b(?:wrong|incorrect|not\s+(?:right|correct)|mistakes?|errors?|redo|recheck|wait|actually|oops|"
    r"scratch\s+that|correct(?:ion|ing)|fix(?:ing)?\s+(?:it|this|that))\b",
    re.IGNORECASE,
)
# The "=" fallback only accepts a short right-hand side: a long one is prose, not an answer.
_MAX_EQ_RHS_CHARS = 60


def _matching_brace(text: str, open_idx: int) -> int:
    """Index of the ``}`` matching ``text[open_idx] == '{'``, or -1 if the group never closes."""
    depth = 0
    i = open_idx
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2  # an escaped brace (\{ or \}) does not count
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def find_boxes(text: str) -> list[tuple[int, int, str | None]]:
    """All ``\\boxed``/``\\fbox`` groups in order as (start, end, content); content None if unclosed.

    ``\\boxed 5`` (no braces, a MATH-dataset form) yields the next whitespace-delimited token.
    """
    found: list[tuple[int, int, str | None]] = []
    i = 0
    # next occurrence of each command at or after i; re-searched only once passed (keeps this linear)
    nxt = {cmd: text.find(cmd) for cmd in _BOX_COMMANDS}
    while True:
        for cmd in _BOX_COMMANDS:
            if 0 <= nxt[cmd] < i:
                nxt[cmd] = text.find(cmd, i)
        starts = [(s, c) for c, s in nxt.items() if s >= 0]
        if not starts:
            return found
        start, cmd = min(starts)
        j = start + len(cmd)
        while j < len(text) and text[j] == " ":
            j += 1
        if j < len(text) and text[j] == "{":
            close = _matching_brace(text, j)
            if close < 0:
                found.append((start, len(text), None))
                return found
            found.append((start, close + 1, text[j + 1 : close]))
            i = close + 1
        elif j > start + len(cmd) and j < len(text) and not text[j].isspace():
            # "\boxed 5": the argument is one token
            k = j
            while k < len(text) and not text[k].isspace() and text[k] not in "$.,":
                k += 1
            found.append((start, k, text[j:k]))
            i = k
        else:
            # "\boxed" followed by a letter (another macro name) or nothing: not a box
            i = j if j > start else start + len(cmd)


def strip_prompt_echo(response: str, prompt: str | None = None) -> str:
    """The part of ``response`` the model wrote itself (after any echoed prompt)."""
    cut = 0
    for marker in _ASSISTANT_MARKERS:
        pos = response.rfind(marker)
        if pos >= 0:
            cut = max(cut, pos + len(marker))
    if prompt:
        pos = response.rfind(prompt)
        if pos >= 0:
            cut = max(cut, pos + len(prompt))
    return response[cut:]


def _squash(s: str) -> str:
    return "".join(s.split())


def _last_nonempty_line(text: str) -> str:
    for line in reversed(text.splitlines()):
        if line.strip():
            return line.strip()
    return ""


def _strip_math_delims(s: str) -> str:
    s = s.strip()
    for left, right in (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$")):
        if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
            s = s[len(left) : len(s) - len(right)].strip()
    return s.strip()


def _clean_tail(s: str) -> str:
    s = s.strip().rstrip(".").strip()
    s = _strip_math_delims(s)
    return s.rstrip(".").strip()


def _each_retracted(text: str, boxes: list[tuple[int, int, str]]) -> bool:
    """True if every run of equal boxes but the last is followed by a retraction before the next run. The
    text after a run's last box is searched (a restated answer must be retracted again), and the runs'
    gaps are disjoint, so this stays linear in the text."""
    for (_s, end, content), (next_start, _e, next_content) in pairwise(boxes):
        if content != next_content and not _RETRACTION.search(text, end, next_start):
            return False
    return True


def _from_boxes(text: str) -> tuple[bool, str | None]:
    """(a box decided the outcome, answer). A closed final box is the answer unless contradicted nearby."""
    boxes = find_boxes(text)
    if not boxes:
        return False, None
    start, _end, content = boxes[-1]
    if content is None:
        return True, None  # truncated inside the final box: no answer, and no falling back to earlier ones
    # Several different boxes in the final paragraph = a candidate list, not an answer, unless each earlier
    # answer is explicitly retracted before the next different one ("\\boxed{7} is wrong, let me redo.
    # Final: \\boxed{8}"): a self-correction states one answer.
    para_start = text.rfind("\n\n", 0, start)
    final = [(s, e, _squash(c)) for s, e, c in boxes if s > para_start and c is not None]
    if len({c for _s, _e, c in final}) > 1 and not _each_retracted(text, final):
        return True, None
    content = content.strip()
    return True, content if content else None


def _from_text(text: str) -> str | None:
    """PRIME's "answer is"/"is the answer"/"=" fallbacks, restricted to the last non-empty line."""
    line = _last_nonempty_line(text)
    if not line:
        return None
    matches = list(_ANSWER_PHRASE.finditer(line))
    if matches:
        tail = _clean_tail(line[matches[-1].end() :])
        return tail or None
    m = _IS_THE_ANSWER.search(line)
    if m:
        head = line[: m.start()]
        # keep only the last clause before "is the answer"
        head = head.rstrip()
        if head.endswith("$") and head.count("$") >= 2:  # "... $\\frac{1}{2}$ is the answer"
            head = head[: len(head) - 1].rsplit("$", 1)[1]
        else:  # "So 9 is the answer": the last token
            head = head.split()[-1] if head.split() else ""
        head = _clean_tail(head)
        return head or None
    # "... = 42." only on a finished sentence: a truncated line ending mid-thought never matches.
    finished = line.endswith((".", "$", "\\]", "$$"))
    if finished and "=" in line:
        rhs = _clean_tail(line.rsplit("=", 1)[1])
        rhs = rhs.rstrip("$").strip()
        if rhs and len(rhs) <= _MAX_EQ_RHS_CHARS and any(ch.isdigit() for ch in rhs):
            return rhs
    return None


def extract_final_answer(response: str, prompt: str | None = None) -> str | None:
    """The final answer string in ``response`` (LaTeX, unnormalised), or None if it gives none.

    ``prompt``: if the decoded sample may contain the prompt, pass it so that a box inside the echo is
    ignored (chat-template assistant markers are recognised without it).
    """
    if not isinstance(response, str):
        raise ValueError(f"response must be a str, got {type(response).__name__}")
    text = strip_prompt_echo(response, prompt)
    decided, answer = _from_boxes(text)
    if decided:
        return answer
    return _from_text(text)
