"""Everything a run needs before its first step: the parallel world, the run directory (resolved config
saved), logging, the starting model (given, or the embedded default's tiny model + SFT), the prompt data."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch

from . import parallel, third_party_logs
from .config import Config, dump_yaml
from .console import RunConsole
from .data import (
    PromptLoader,
    PromptRecord,
    apply_prime_suffix,
    drop_long_prompts,
    load_prompts,
)
from .data.builtin import BuiltinTask, builtin_task
from .data.chain_steps import StepLabeller
from .metrics_log import MetricsLogger
from .run_lock import lock_run_dir


@dataclass
class Run:
    config: Config
    dir: Path
    layout: parallel.ParallelLayout
    console: RunConsole
    logger: MetricsLogger
    lock: IO | None = None  # rank 0's hold on run.dir/.lock (run_lock.py), released when the process ends


def start_run(config: Config) -> Run:
    backend = None if config.parallel.backend == "auto" else config.parallel.backend
    layout = parallel.init_distributed(tp=config.parallel.tp, pp=config.parallel.pp, backend=backend,
                                       timeout_s=config.parallel.collective_timeout_s)
    if config.run.deterministic:
        # CPU runs are bitwise reproducible (kill-and-resume equals the uninterrupted run); on GPU this
        # selects deterministic kernels where PyTorch has them and warns where it does not.
        torch.use_deterministic_algorithms(True, warn_only=True)
    seed_everything(config.train.seed + layout.rank)
    run_dir = Path(config.run.dir)
    if layout.is_rank0:
        run_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_run_dir(run_dir, is_rank0=layout.is_rank0)  # before anything in the directory is written
    if layout.is_rank0:
        tmp = run_dir / ".config.yaml.tmp"
        tmp.write_text(dump_yaml(config))
        os.replace(tmp, run_dir / "config.yaml")
    parallel.barrier()
    # from here on vLLM's, Megatron's and transformers' logs go to run.dir (logging.third_party); train() ends it
    third_party_logs.route(config.logging.third_party, run_dir / third_party_logs.THIRD_PARTY_LOG, rank=layout.rank)
    console = RunConsole(total_steps=config.train.steps, enabled=layout.is_rank0)
    wandb = {"project": config.logging.wandb_project, "dir": str(run_dir)} if config.logging.wandb_project else None
    logger = MetricsLogger(run_dir, tensorboard=config.logging.tensorboard, wandb=wandb)
    return Run(config, run_dir, layout, console, logger, lock)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def task_of(config: Config) -> BuiltinTask:
    """The built-in task data.task with its knobs (data.arithmetic or data.chain); bad knobs raise."""
    return builtin_task(config.data.task, dict(getattr(config.data, config.data.task)))


def step_labeller(config: Config) -> StepLabeller | None:
    """The step labeller of the training prompts (the built-in chain task only; None otherwise)."""
    if config.data.train_files:
        return None
    task = task_of(config)
    return task.step_labeller(task.n, seed=config.train.seed, suffix=config.data.prompt_suffix,
                              system_prompt=config.data.system_prompt)


class DataError(ValueError):
    """The prompt data cannot be used (a malformed row, named by file and line; an unknown data.arithmetic
    / data.chain key; a missing file): a user error, reported in one line before any model starts."""


def prompt_records(config: Config) -> list[PromptRecord]:
    """The RL prompts: data.train_files, or the built-in task data.task when none are given."""
    try:
        return _prompt_records(config)
    except (ValueError, OSError) as error:
        raise DataError(str(error)) from None


def _prompt_records(config: Config) -> list[PromptRecord]:
    if not config.data.train_files:
        task = task_of(config)
        return task.records(task.n, seed=config.train.seed, suffix=config.data.prompt_suffix,
                            system_prompt=config.data.system_prompt)
    loaded = load_prompts(config.data.train_files, on_error=config.data.on_bad_row)
    if loaded.skipped:
        print(f"primeflow: skipped {len(loaded.skipped)} malformed rows (first: {loaded.skipped[0]})",
              file=sys.stderr)
    records = loaded.records
    if config.data.prompt_suffix or config.data.system_prompt:
        records = [apply_prime_suffix(r, system_prompt=config.data.system_prompt) for r in records]
    return records


def prompt_loader(config: Config, records: list[PromptRecord], tokenizer, log=print) -> PromptLoader:
    """The loader over the prompts that fit `data.max_prompt_len` tokens (PRIME's filter_prompts): over-long
    prompts are dropped here, counted and reported, instead of ending the run when a batch reaches them.
    Deterministic, so a resumed run sees the same dataset (its fingerprint is unchanged)."""
    kept, dropped = drop_long_prompts(tokenizer, records, max_prompt_len=config.data.max_prompt_len)
    if dropped:
        uid, n = max(dropped, key=lambda d: d[1])
        log(f"primeflow: dropped {len(dropped)} of {len(records)} prompts longer than data.max_prompt_len="
            f"{config.data.max_prompt_len} tokens (longest: {uid!r}, {n} tokens)")
    if not kept:
        raise ValueError(f"data: every one of the {len(records)} prompts is longer than data.max_prompt_len="
                         f"{config.data.max_prompt_len} tokens; raise data.max_prompt_len or use shorter prompts")
    return PromptLoader(kept, batch_size=config.data.prompts_per_step, seed=config.train.seed)


SFT_RECIPE = "primeflow_sft_recipe.json"


class StaleSFTModel(ValueError):
    """run.dir/sft_model was built from other settings than the config's, and the run resumes from it."""


def _sft_recipe(config: Config) -> dict:
    """Every setting that decides the embedded default's SFT model (JSON-normalised for comparison)."""
    task = task_of(config)
    recipe = {"sft": dataclasses.asdict(config.sft), "train.seed": config.train.seed,
              "train.micro_batch_tokens": config.train.micro_batch_tokens,
              "model.tiny_overrides": config.model.tiny_overrides,
              "data.prompt_suffix": config.data.prompt_suffix, "data.system_prompt": config.data.system_prompt}
    # the arithmetic task's recipe keeps its original shape, so SFT models built before data.task existed
    # are still reused; another task names itself and its knobs
    if task.name == "arithmetic":
        recipe["data.arithmetic"] = task.knobs
    else:
        recipe["data.task"] = task.name
        recipe[f"data.{task.name}"] = task.knobs
    return json.loads(json.dumps(recipe, sort_keys=True))


def _recipe_changes(saved: dict, current: dict) -> list[str]:
    changes = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changes += [f"{key}.{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                        if old.get(k) != new.get(k)]
        elif old != new:
            changes.append(f"{key}: {old!r} -> {new!r}")
    return changes


def _reusable_sft_model(run: Run, sft_dir: Path, recipe: dict, *, resuming: bool) -> bool:
    """Whether run.dir/sft_model may be reused: it exists and was built from these settings. A resumed run
    whose SFT model was built from other settings is refused (its reference model and checkpoints come from
    that SFT model); a fresh start rebuilds it."""
    if not (sft_dir / "config.json").is_file():
        return False
    saved_file = sft_dir / SFT_RECIPE
    if not saved_file.is_file():  # built before recipes were recorded: nothing to compare
        return True
    changes = _recipe_changes(json.loads(saved_file.read_text()), recipe)
    if not changes:
        return True
    if resuming:
        raise StaleSFTModel(
            f"{sft_dir} was built from other settings than this config ({'; '.join(changes)}), and the run "
            f"resumes from checkpoints trained on it: keep the old values, or start a new run.dir")
    run.console.print(f"rebuilding {sft_dir}: its settings changed ({'; '.join(changes)})")
    if run.layout.is_rank0:
        trash = sft_dir.with_name(f".trash-sft_model-{os.getpid()}")
        os.replace(sft_dir, trash)
        shutil.rmtree(trash)
    parallel.barrier()
    return False


def starting_model(run: Run, *, resuming: bool = False) -> Path:
    """model.path, or (embedded default) a tiny random Qwen2 checkpoint SFT'd on the built-in task (data.task) in
    run_dir/sft_model (reused when it exists and its recorded settings match the config; see
    `_reusable_sft_model`)."""
    config = run.config
    if config.model.path:
        path = Path(config.model.path)
        if not (path / "config.json").is_file():
            raise ValueError(f"model.path={str(path)!r} is not an HF checkpoint directory (no config.json)")
        return path
    from primeflow.models import make_tiny_checkpoint

    from .sft import run_sft

    sft_dir = run.dir / "sft_model"
    recipe = _sft_recipe(config)
    if _reusable_sft_model(run, sft_dir, recipe, resuming=resuming):
        return sft_dir
    base = run.dir / "base_model"
    if run.layout.is_rank0:
        make_tiny_checkpoint(base, seed=config.train.seed, **config.model.tiny_overrides)
    parallel.barrier()
    pairs = task_of(config).sft_pairs(config.sft.examples, seed=config.train.seed + 1,
                                      suffix=config.data.prompt_suffix, system_prompt=config.data.system_prompt)
    run.console.print(f"SFT warm-start of a tiny model on the {config.data.task} task: {config.sft.steps} steps x "
                      f"{config.sft.batch_size} examples")
    tmp = run.dir / "sft_model.tmp"
    run_sft(base, tmp, pairs, config.sft, seed=config.train.seed,
            micro_batch_tokens=config.train.micro_batch_tokens, log=run.console.print)
    if run.layout.is_rank0:
        (tmp / SFT_RECIPE).write_text(json.dumps(recipe, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, sft_dir)
    parallel.barrier()
    return sft_dir
