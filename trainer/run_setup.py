"""Everything a run needs before its first step: the parallel world, the run directory (resolved config
saved), logging, the starting model (given, or the embedded default's tiny model + SFT), the prompt data."""

from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import parallel
from .config import Config, dump_yaml
from .console import RunConsole
from .data import (PromptLoader, PromptRecord, apply_prime_suffix, arithmetic_sft_pairs, arithmetic_task,
                   drop_long_prompts, load_prompts)
from .metrics_log import MetricsLogger


@dataclass
class Run:
    config: Config
    dir: Path
    layout: parallel.ParallelLayout
    console: RunConsole
    logger: MetricsLogger


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
        tmp = run_dir / ".config.yaml.tmp"
        tmp.write_text(dump_yaml(config))
        os.replace(tmp, run_dir / "config.yaml")
    parallel.barrier()
    console = RunConsole(total_steps=config.train.steps, enabled=layout.is_rank0)
    wandb = {"project": config.logging.wandb_project, "dir": str(run_dir)} if config.logging.wandb_project else None
    logger = MetricsLogger(run_dir, tensorboard=config.logging.tensorboard, wandb=wandb)
    return Run(config, run_dir, layout, console, logger)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _arithmetic_kwargs(config: Config) -> dict:
    a = dict(config.data.arithmetic)
    allowed = {"n", "digits", "ops", "n_operands", "allow_negative", "template"}
    unknown = sorted(set(a) - allowed)
    if unknown:
        raise ValueError(f"data.arithmetic.{unknown[0]} is not a known key; allowed: {sorted(allowed)}")
    return a


def prompt_records(config: Config) -> list[PromptRecord]:
    """The RL prompts: data.train_files, or the built-in arithmetic task when none are given."""
    if not config.data.train_files:
        kw = _arithmetic_kwargs(config)
        n = kw.pop("n", 2000)
        return arithmetic_task(n, seed=config.train.seed, suffix=config.data.prompt_suffix,
                               system_prompt=config.data.system_prompt, **kw)
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


def starting_model(run: Run) -> Path:
    """model.path, or (embedded default) a tiny random Qwen2 checkpoint SFT'd on the arithmetic task in
    run_dir/sft_model (reused when it exists, e.g. on resume)."""
    config = run.config
    if config.model.path:
        path = Path(config.model.path)
        if not (path / "config.json").is_file():
            raise ValueError(f"model.path={str(path)!r} is not an HF checkpoint directory (no config.json)")
        return path
    from primeflow.models import make_tiny_checkpoint

    from .sft import run_sft

    sft_dir = run.dir / "sft_model"
    if (sft_dir / "config.json").is_file():
        return sft_dir
    base = run.dir / "base_model"
    if run.layout.is_rank0:
        make_tiny_checkpoint(base, seed=config.train.seed, **config.model.tiny_overrides)
    parallel.barrier()
    kw = _arithmetic_kwargs(config)
    kw.pop("n", None)
    pairs = arithmetic_sft_pairs(config.sft.examples, seed=config.train.seed + 1, suffix=config.data.prompt_suffix,
                                 system_prompt=config.data.system_prompt, **kw)
    run.console.print(f"SFT warm-start of a tiny model: {config.sft.steps} steps x {config.sft.batch_size} examples")
    tmp = run.dir / "sft_model.tmp"
    run_sft(base, tmp, pairs, config.sft, seed=config.train.seed,
            micro_batch_tokens=config.train.micro_batch_tokens, log=run.console.print)
    if run.layout.is_rank0:
        os.replace(tmp, sft_dir)
    parallel.barrier()
    return sft_dir
