"""primeflow.trainer.data: prompts in, batches out (issue 7, items 2 and 3's filter/refill).

- ``load_prompts(path, on_error="raise"|"skip") -> LoadedPrompts``: JSONL / parquet rows in the
  Eurus-2-RL-Data schema or simple ``{problem, answer}`` / ``{problem, tests}`` rows -> ``PromptRecord``s;
  malformed rows raise naming file and line, or are skipped and listed.
- ``apply_prime_suffix(record, system_prompt=...)``, ``PRIME_SYSTEM_PROMPT``, ``MATH_SUFFIX``,
  ``CODE_SUFFIX``: PRIME's prompt format (prime_spec.md 5.1).
- ``arithmetic_task`` / ``arithmetic_sft_pairs``: the built-in one-expression task (data.task=arithmetic; the
  embedded default's task is the chain task, trainer/data/chain_arithmetic.py).
- ``encode_prompts(tokenizer, records, max_prompt_len=...)``, ``drop_long_prompts``, ``encode_sft_pair``:
  token ids through the chat template.
- ``PromptLoader``: seeded epochs, fixed fetch size, the refill buffer, exact state_dict round trip.
- ``filter_groups(scores, group_size, low=0.2, high=0.8)``: the inclusive, float-safe accuracy filter.
- ``assemble_step``: PRIME's fill-until-full batch assembly with requeue of the
  surplus prompts; the trainer provides generation + verification as a callback returning ``GroupResults``.

Usage::

    records = load_prompts("train.parquet", on_error="skip").records      # or arithmetic_task(4096, seed=0)
    records = [apply_prime_suffix(r) for r in records]                   # no-op on Eurus rows
    loader = PromptLoader(records, batch_size=256, seed=0)

    def generate_and_score(prompts):                                      # K samples per prompt, verified
        ids = encode_prompts(tokenizer, prompts, max_prompt_len=1024)
        ...
        return GroupResults(scores=flat_scores, payload=per_prompt_groups, truncated=flat_truncated)

    batch = assemble_step(loader, generate_and_score, prompts_per_step=256, group_size=4)
    if batch.epoch_ended: ...            # partial batch discarded; the loader is already in the next epoch
    else: train on batch.payload (exactly 256 groups); log batch.metrics()
    checkpoint["loader"] = loader.state_dict()                            # plain JSON; load_state_dict on resume
"""

from .arithmetic import (
    ArithmeticProblem,
    arithmetic_problems,
    arithmetic_response,
    arithmetic_sft_pairs,
    arithmetic_task,
)
from .assembly import (
    AssembledBatch,
    FilterStarvationError,
    GenerateAndScore,
    GroupResults,
    assemble_step,
)
from .encode import drop_long_prompts, encode_prompts, encode_sft_pair, prompt_ids
from .filtering import BOUND_TOL, filter_groups, group_means
from .loader import PromptLoader, epoch_permutation
from .prompt_format import CODE_SUFFIX, MATH_SUFFIX, PRIME_SYSTEM_PROMPT, apply_prime_suffix, suffix_for
from .records import LoadedPrompts, PromptRecord, load_prompts, record_from_row

__all__ = [
    "BOUND_TOL",
    "CODE_SUFFIX",
    "MATH_SUFFIX",
    "PRIME_SYSTEM_PROMPT",
    "ArithmeticProblem",
    "AssembledBatch",
    "FilterStarvationError",
    "GenerateAndScore",
    "GroupResults",
    "LoadedPrompts",
    "PromptLoader",
    "PromptRecord",
    "apply_prime_suffix",
    "arithmetic_problems",
    "arithmetic_response",
    "arithmetic_sft_pairs",
    "arithmetic_task",
    "assemble_step",
    "drop_long_prompts",
    "encode_prompts",
    "encode_sft_pair",
    "epoch_permutation",
    "filter_groups",
    "group_means",
    "load_prompts",
    "prompt_ids",
    "record_from_row",
    "suffix_for",
]
