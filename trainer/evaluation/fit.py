"""Fit an evaluation to each model's context length, before any engine starts.

vLLM checks prompt + ``max_tokens`` against ``max_model_len`` only once it has started (a minute or more for a
real model) and then fails the whole benchmark on the first prompt that does not fit. So ``primeflow eval``
tokenizes every prompt with each model's tokenizer first and decides here:

- the context length: ``--max-model-len`` (at most the checkpoint's ``max_position_embeddings``) or the
  checkpoint's;
- ``max_tokens``, when ``--max-tokens`` is not given: ``min(4096, context - longest prompt)``, but at least
  ``context // 2`` (one very long prompt must not shrink every response; prompts that then do not fit go to
  the long-prompt policy). With several models the smallest value is used, so the rows of a comparison are
  measured with the same response budget. An explicit ``--max-tokens`` must leave room for a prompt;
- the prompts longer than ``context - max_tokens`` (``--long-prompts``): ``skip`` (default: not generated,
  not scored, counted), ``truncate`` (the engine drops their beginning, counted) or ``error``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .benchmarks import EvalRecord
from .vllm_backend import checkpoint_context

DEFAULT_MAX_TOKENS = 4096
LONG_PROMPT_POLICIES = ("skip", "truncate", "error")
DEFAULT_RULE = f"default: min({DEFAULT_MAX_TOKENS}, context - longest prompt), at least context/2"


@dataclass
class ModelFit:
    """One model's context length and the token count of each of its prompts, per benchmark."""

    label: str
    context: int
    prompt_tokens: dict[str, list[int]]
    long_ids: dict[str, list[str]] = field(default_factory=dict)  # filled by apply_long_prompt_policy

    @property
    def longest(self) -> int:
        return max((n for lengths in self.prompt_tokens.values() for n in lengths), default=0)


def _rope_scaled(model_dir: Any) -> bool:
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    return bool(cfg.get("rope_scaling") or (cfg.get("rope_parameters") or {}).get("factor"))


def context_length(model_dir: Any, max_model_len: int | None) -> int:
    """``--max-model-len`` if given (checked against the checkpoint), else the checkpoint's context."""
    try:
        native = checkpoint_context(model_dir)
    except ValueError:
        if max_model_len is None:
            raise
        native = None
    if max_model_len is None:
        return native
    if max_model_len < 2:
        raise ValueError(f"--max-model-len {max_model_len}: must be at least 2")
    # With rope_scaling vLLM allows more than max_position_embeddings (and checks it itself at start-up).
    if native is not None and max_model_len > native and not _rope_scaled(model_dir):
        raise ValueError(f"--max-model-len {max_model_len} is more than the context length {native} of "
                         f"{model_dir} (max_position_embeddings); pass at most {native} or leave it out")
    return max_model_len


def measure(label: str, context: int, tokenizer: Any, prompts: Mapping[str, Sequence[str]]) -> ModelFit:
    """Token counts as the vLLM backend encodes the prompts (rendered text, no added special tokens)."""
    # verbose=False: the tokenizer's "longer than the maximum sequence length" warning is what we handle here
    lengths = {b: [len(tokenizer.encode(p, add_special_tokens=False, verbose=False)) for p in ps]
               for b, ps in prompts.items()}
    return ModelFit(label, context, lengths)


def resolve_max_tokens(requested: int | None, fits: Sequence[ModelFit]) -> int:
    """The response budget for every model (see the module docstring); ValueError names the flag."""
    if not fits:  # oracle backends: no model, no context
        return DEFAULT_MAX_TOKENS if requested is None else requested
    if requested is None:
        return min(min(DEFAULT_MAX_TOKENS, max(f.context - f.longest, f.context // 2)) for f in fits)
    for f in fits:
        if requested >= f.context:
            raise ValueError(f"--max-tokens {requested} leaves no room for a prompt in {f.label} (context length "
                             f"{f.context}): pass --max-tokens below {f.context}, or leave it out to fit the "
                             "context")
    return requested


def apply_long_prompt_policy(fit: ModelFit, data: Mapping[str, Sequence[EvalRecord]], max_tokens: int,
                             policy: str) -> dict[str, list[EvalRecord]]:
    """The records to generate for, per benchmark; records ``fit.long_ids``. ValueError for ``error``, and
    when ``skip`` leaves a benchmark with nothing."""
    if policy not in LONG_PROMPT_POLICIES:
        raise ValueError(f"--long-prompts {policy}: allowed: {', '.join(LONG_PROMPT_POLICIES)}")
    budget = fit.context - max_tokens
    kept: dict[str, list[EvalRecord]] = {}
    for name, records in data.items():
        too_long = [n > budget for n in fit.prompt_tokens[name]]
        long = [r for r, over in zip(records, too_long, strict=True) if over]
        fit.long_ids[name] = [r.id for r in long]
        where = f"the {budget} prompt tokens that fit {fit.label} (context {fit.context} - max_tokens {max_tokens})"
        if long and policy == "error":
            first = next(n for n, over in zip(fit.prompt_tokens[name], too_long, strict=True) if over)
            more = f" (and {len(long) - 1} more)" if len(long) > 1 else ""
            raise ValueError(f"{name}: problem {long[0].id!r}{more} has a {first}-token prompt, more than {where}; "
                             "pass --long-prompts skip or truncate, a lower --max-tokens or a larger --max-model-len")
        if policy == "skip":
            records = [r for r, over in zip(records, too_long, strict=True) if not over]
            if not records:
                raise ValueError(f"{name}: every prompt is longer than {where}; pass a larger --max-model-len, "
                                 "a lower --max-tokens or --long-prompts truncate")
        kept[name] = list(records)
    return kept
