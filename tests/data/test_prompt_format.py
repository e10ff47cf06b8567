"""PRIME's prompt format: the math/code suffix is appended once (idempotent), the system prompt only when
asked and never replacing one, and the records are copies (the input is not mutated)."""

from __future__ import annotations

import copy
import json

import pytest
from primeflow.trainer.data import (
    CODE_SUFFIX,
    MATH_SUFFIX,
    PRIME_SYSTEM_PROMPT,
    PromptRecord,
    apply_prime_suffix,
)


def _rec(ability="math", messages=None):
    gt = "4" if ability == "math" else json.dumps({"inputs": ["1\n"], "outputs": ["2\n"]})
    return PromptRecord(uid="u1", messages=messages or [{"role": "user", "content": "What is 2+2?  "}],
                        ability=ability, ground_truth=gt, data_source="t")


@pytest.mark.parametrize("ability,suffix", [("math", MATH_SUFFIX), ("code", CODE_SUFFIX)])
def test_suffix_appended_once(ability, suffix):
    rec = _rec(ability)
    before = copy.deepcopy(rec.messages)
    out = apply_prime_suffix(rec)
    assert rec.messages == before  # input untouched
    assert out.messages == [{"role": "user", "content": "What is 2+2?\n\n" + suffix}]
    assert apply_prime_suffix(out) == out
    assert (out.uid, out.ability, out.ground_truth, out.data_source) == (rec.uid, rec.ability, rec.ground_truth, "t")


def test_spec_texts():
    # prime_spec.md 5.1: the math instruction asks for \boxed{}, the code one for a ```python block at the end,
    # the system prompt lists the seven actions and the "Next action:" line.
    assert "\\boxed{Your answer}" in MATH_SUFFIX
    assert "```python" in CODE_SUFFIX and CODE_SUFFIX.rstrip().endswith("at the end.")
    for action in ("[ASSESS]", "[ADVANCE]", "[VERIFY]", "[SIMPLIFY]", "[SYNTHESIZE]", "[PIVOT]", "[OUTPUT]"):
        assert action in PRIME_SYSTEM_PROMPT
    assert "Next action: [NEXT ACTION NAME]" in PRIME_SYSTEM_PROMPT


def test_system_prompt_option():
    out = apply_prime_suffix(_rec(), system_prompt=True)
    assert out.messages[0] == {"role": "system", "content": PRIME_SYSTEM_PROMPT} and len(out.messages) == 2
    assert apply_prime_suffix(out, system_prompt=True) == out
    custom = apply_prime_suffix(_rec(), system_prompt="be brief")
    assert custom.messages[0] == {"role": "system", "content": "be brief"}
    kept = apply_prime_suffix(_rec(messages=[{"role": "system", "content": "mine"},
                                             {"role": "user", "content": "q"}]), system_prompt=True)
    assert kept.messages[0]["content"] == "mine" and len(kept.messages) == 2
    with pytest.raises(ValueError, match="system_prompt must be a bool or a str"):
        apply_prime_suffix(_rec(), system_prompt=3)


def test_bad_records():
    with pytest.raises(ValueError, match="ability must be 'math' or 'code'"):
        apply_prime_suffix(_rec("bio"))
    with pytest.raises(ValueError, match="record 'u1': the last message must be the user's"):
        apply_prime_suffix(_rec(messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]))
