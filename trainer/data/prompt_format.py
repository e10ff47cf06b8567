"""PRIME's prompt format (prime_spec.md 5.1): the action-centric CoT system prompt and the answer suffixes.

Eurus-2-RL-Data rows already contain both, so ``apply_prime_suffix`` leaves a message that already ends
with the suffix alone (it is idempotent). Simple ``{problem, answer}`` rows and the arithmetic task start
bare; the suffix is an option because every character is a token for the tiny byte-level model.

The texts below are our own wording of what the spec describes (the math suffix is the exact instruction
the spec quotes, since the verifier looks for ``\\boxed{}``).
"""

from __future__ import annotations

import dataclasses

from .records import PromptRecord

ACTIONS = ("ASSESS", "ADVANCE", "VERIFY", "SIMPLIFY", "SYNTHESIZE", "PIVOT", "OUTPUT")

PRIME_SYSTEM_PROMPT = (
    "Solve the task step by step. Each step is one of these actions:\n\n"
    + "\n".join(f"[{a}]" for a in ACTIONS)
    + "\n\nWrite every step in this form:\n\n"
    "[ACTION NAME]\n\n"
    "# what you do in this step\n\n"
    "...\n\n"
    "Next action: [NEXT ACTION NAME]\n"
)

MATH_SUFFIX = "Present the answer in LaTex format: \\boxed{Your answer}"
CODE_SUFFIX = "Write Python code to solve the problem. Present the code in \n```python\nYour code\n```\nat the end."
SUFFIX_SEPARATOR = "\n\n"


def suffix_for(ability: str) -> str:
    """The instruction appended to the user message for a record of this ability."""
    if ability == "math":
        return MATH_SUFFIX
    if ability == "code":
        return CODE_SUFFIX
    raise ValueError(f"ability must be 'math' or 'code', got {ability!r}")


def apply_prime_suffix(record: PromptRecord, *, system_prompt: bool | str = False) -> PromptRecord:
    """Return a copy of ``record`` whose last user message ends with PRIME's math/code instruction.

    system_prompt: False (leave the messages' system prompt as is), True (prepend PRIME_SYSTEM_PROMPT if the
    record has no system message), or a str (prepend that text instead). An existing system message is never
    replaced. Applying it twice gives the same record.
    """
    suffix = suffix_for(record.ability)
    messages = [dict(m) for m in record.messages]
    last = messages[-1]
    if last.get("role") != "user":
        raise ValueError(f"record {record.uid!r}: the last message must be the user's, got {last.get('role')!r}")
    if not last["content"].rstrip().endswith(suffix.rstrip()):
        last["content"] = last["content"].rstrip() + SUFFIX_SEPARATOR + suffix
    if system_prompt is not False and messages[0].get("role") != "system":
        if system_prompt is True:
            text = PRIME_SYSTEM_PROMPT
        elif isinstance(system_prompt, str):
            text = system_prompt
        else:
            raise ValueError(f"system_prompt must be a bool or a str, got {type(system_prompt).__name__}")
        messages.insert(0, {"role": "system", "content": text})
    return dataclasses.replace(record, messages=messages)


def math_prompt_record(uid: str, expression: str, answer: int, *, template: str, suffix: bool,
                       system_prompt: bool | str, data_source: str) -> PromptRecord:
    """One built-in math task's prompt: `template` filled with `expression`, optionally PRIME's boxed-answer
    suffix and a system prompt (True: PRIME's; a str: that one; False: none)."""
    content = template.format(expr=expression)
    if suffix:
        content = content.rstrip() + SUFFIX_SEPARATOR + MATH_SUFFIX
    messages = [{"role": "user", "content": content}]
    if system_prompt is True:
        messages.insert(0, {"role": "system", "content": PRIME_SYSTEM_PROMPT})
    elif isinstance(system_prompt, str):
        messages.insert(0, {"role": "system", "content": system_prompt})
    elif system_prompt is not False:
        raise ValueError(f"system_prompt must be a bool or a str, got {type(system_prompt).__name__}")
    return PromptRecord(uid=uid, messages=messages, ability="math", ground_truth=str(answer),
                        data_source=data_source)
