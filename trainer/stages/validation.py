"""Periodic validation inside training (train.validate_every > 0): the evaluation harness's `run_validation`
on the live, weight-synced rollout engine (no second engine), greedy.

`train.validation_benchmarks` names benchmark files of `primeflow eval` (math500, aime24, ...), plus
"arithmetic": held-out problems of the built-in task data.task (2-digit arithmetic or the chain task; a
seed no training or SFT prompt uses), asked exactly like the training prompts — what the embedded tiny run
can actually solve. Metrics are logged as `val/<benchmark>/avg@1` and `val/avg/avg@1`.
"""

from __future__ import annotations

from ..config import Config
from ..data import PromptRecord
from ..data.builtin import builtin_task
from ..evaluation import EvalRecord, PromptBuilder, RolloutEngineBackend, load_benchmarks, run_validation

HELD_OUT_SEED_OFFSET = 7_777  # training prompts use train.seed, SFT pairs train.seed + 1


def held_out_arithmetic(config: Config) -> list[PromptRecord]:
    task = builtin_task(config.data.task, dict(getattr(config.data, config.data.task)))
    return task.records(config.train.validation_limit, seed=config.train.seed + HELD_OUT_SEED_OFFSET,
                        suffix=config.data.prompt_suffix, system_prompt=config.data.system_prompt)


def validation_stage(engine, tokenizer, config: Config, step: int) -> dict[str, float]:
    every, names = config.train.validate_every, config.train.validation_benchmarks
    if not every or step % every or not names:
        return {}
    benchmarks = [n for n in names if n != "arithmetic"]
    records = load_benchmarks(benchmarks, limit=config.train.validation_limit) if benchmarks else []
    messages: dict[str, list[dict]] = {}
    if "arithmetic" in names:
        for rec in held_out_arithmetic(config):
            messages[rec.uid] = rec.messages
            records.append(EvalRecord(benchmark="arithmetic", id=rec.uid, problem=rec.messages[-1]["content"],
                                      kind="math", answer=rec.ground_truth))
    benchmark_prompt = PromptBuilder(tokenizer, system_prompt="prime" if config.data.system_prompt else "none")

    def render(record: EvalRecord) -> str:
        if record.benchmark == "arithmetic":
            return tokenizer.apply_chat_template(messages[record.id], tokenize=False, add_generation_prompt=True)
        return benchmark_prompt(record)

    return run_validation(RolloutEngineBackend(engine, tokenizer), records, render=render, samples=1,
                          temperature=0.0, max_tokens=config.rollout.max_tokens, seed=config.train.seed)
