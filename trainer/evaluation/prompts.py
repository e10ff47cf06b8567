"""PRIME's prompt formats (prime_spec.md §5.1) rendered through the model's chat template.

PRIME evaluates with the same prompts it trains on: the action-centric system prompt, and the user message
``problem + "\\n\\nPresent the answer in LaTex format: \\boxed{Your answer}"`` for math or
``problem + "\\n\\nWrite Python code to solve the problem. Present the code in \\n```python\\nYour code\\n```\\nat
the end."`` for code (PRIME-RL/PRIME eval/scripts/eval/math/evaluate_math_chat_quicktest.py ``make_conv_hf``;
the suffixes and system prompt are those of Eurus-2-RL-Data).
"""

from __future__ import annotations

from typing import Any

from .benchmarks import EvalRecord

MATH_SUFFIX = "\n\nPresent the answer in LaTex format: \\boxed{Your answer}"
CODE_SUFFIX = "\n\nWrite Python code to solve the problem. Present the code in \n```python\nYour code\n```\nat the end."

# Eurus-2-RL-Data's system prompt, verbatim (also the first message of ../shared/data/rl/*.jsonl).
PRIME_SYSTEM_PROMPT = (
    "\nWhen tackling complex reasoning tasks, you have access to the following actions. Use them as needed to "
    "progress through your thought process.\n\n[ASSESS]\n\n[ADVANCE]\n\n[VERIFY]\n\n[SIMPLIFY]\n\n[SYNTHESIZE]"
    "\n\n[PIVOT]\n\n[OUTPUT]\n\nYou should strictly follow the format below:\n\n[ACTION NAME]\n\n# Your action "
    "step 1\n\n# Your action step 2\n\n# Your action step 3\n\n...\n\nNext action: [NEXT ACTION NAME]\n\n"
)
SYSTEM_PROMPTS = {"prime": PRIME_SYSTEM_PROMPT, "none": None}


def user_message(record: EvalRecord) -> str:
    """The user turn: the problem plus PRIME's math or code instruction."""
    return record.problem + (MATH_SUFFIX if record.kind == "math" else CODE_SUFFIX)


def chat_messages(record: EvalRecord, system_prompt: str | None = PRIME_SYSTEM_PROMPT) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return msgs + [{"role": "user", "content": user_message(record)}]


def _plain_chat(messages: list[dict[str, str]]) -> str:
    """ChatML, used when there is no tokenizer (oracle backends) or it has no chat template."""
    body = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return body + "<|im_start|>assistant\n"


class PromptBuilder:
    """Renders records to prompt strings with ``tokenizer``'s chat template (ChatML if it has none).

    ``system_prompt``: "prime" (default, PRIME's action-centric prompt), "none", or any literal string.
    """

    def __init__(self, tokenizer: Any | None = None, system_prompt: str | None = "prime") -> None:
        self.tokenizer = tokenizer
        if system_prompt is None:
            self.system_prompt = None
        else:
            self.system_prompt = SYSTEM_PROMPTS.get(system_prompt, system_prompt)
        self.uses_chat_template = bool(tokenizer is not None and getattr(tokenizer, "chat_template", None))

    def __call__(self, record: EvalRecord) -> str:
        messages = chat_messages(record, self.system_prompt)
        if not self.uses_chat_template:
            return _plain_chat(messages)
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
