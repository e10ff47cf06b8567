"""`primeflow train`: the PRIME loop (prime_spec 10.2), one named, timed call per stage.

    primeflow train                                   # the embedded default: tiny model, chain task, CPU
    primeflow train --config configs/qwen2.5-7b-prime.yaml --set train.steps=100 --set run.dir=runs/x
    torchrun --nproc-per-node 8 -m primeflow train --config ...     # TP x PP x DP from parallel.*

Per step: rollout (K samples per prompt, vLLM) -> verify -> accuracy filter + refill -> old log-probs ->
PRM + reference log-probs, token rewards, PRM update -> RLOO advantages -> PPO-clip policy update ->
weight sync to vLLM -> log (metrics.jsonl, TensorBoard) -> checkpoint.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from primeflow.kernels import trusted_values
from primeflow.models import unwrap_model

from . import parallel
from .batch import TrainBatch, check_batch_values, train_batch_from_groups
from .checkpointing import CheckpointError, CheckpointManager, layout_change
from .config import Config, ConfigError, load_config
from .data import AssembledBatch, PromptLoader, assemble_step
from .data.chain_steps import StepLabeller
from .memory_stats import peak_memory_metrics
from .models_setup import PrimeModels, build_prime_models
from .rollout import RolloutEngine, RolloutGroup
from .rollout.handoff import after_rollout, refit_and_wake
from .rollout.metrics import logprob_mismatch_on_device
from .run_lock import RunDirInUse
from .run_setup import (
    DataError,
    Run,
    StaleSFTModel,
    prompt_loader,
    prompt_records,
    start_run,
    starting_model,
    step_labeller,
)
from .stage_hooks import StageHook, no_stage_hook
from .stages.advantage import advantage_stage
from .stages.localisation import localisation_stage
from .stages.logprobs import batch_logprobs
from .stages.policy import policy_stage
from .stages.prm import prm_stage
from .stages.results import OldLogprobs, PolicyTargets
from .stages.rollout import RolloutStage, StageClock
from .stages.step_metrics import DeviceMetrics
from .stages.validation import validation_stage


@dataclass
class Trainer:
    run: Run
    models: PrimeModels
    engine: RolloutEngine
    rollout: RolloutStage
    loader: PromptLoader
    checkpoints: CheckpointManager
    tokenizer: object
    resume_from: Path | None = None  # run.resume resolved when the run started (None: a fresh start)
    policy_version: int = 0
    labeller: StepLabeller | None = None  # step labels of a task with written steps (prm/localisation)
    on_stage: StageHook = no_stage_hook  # called entering the "prm" and "policy" stages (the tests' kill points)

    @property
    def config(self) -> Config:
        return self.run.config


@contextmanager
def timed(t: Trainer, clock: StageClock, name: str):
    """Time a stage (metrics `time/<name>`) and show it as a live bar on rank 0 when logging.progress. The
    stage ends when its device work does (one sync per stage: the time then is the stage's, not the next
    one's; the metrics themselves are read once per step)."""
    t0 = time.perf_counter()
    if t.config.logging.progress:
        with t.run.console.stage(name):
            yield
            parallel.synchronize()
    else:
        yield
        parallel.synchronize()
    clock.add(name, time.perf_counter() - t0)


def collect_rollouts(t: Trainer, step: int, clock: StageClock) -> AssembledBatch:
    """Rollout + verify + filter/refill: fetch prompts until prompts_per_step groups pass the filter."""
    t.rollout.begin_step(step, clock, policy_version=t.policy_version)
    cfg = t.config
    with t.run.console.stage("rollout + verify + filter") if cfg.logging.progress else nullcontext():
        assembled = assemble_step(t.loader, t.rollout, prompts_per_step=cfg.data.prompts_per_step,
                                  group_size=cfg.rollout.n, low=cfg.filter.low, high=cfg.filter.high,
                                  filter_accuracy=cfg.filter.enabled, max_fetches=cfg.filter.max_fetches,
                                  on_starved=lambda message: t.run.console.print(f"step {step}: warning: {message}"))
    if not assembled.epoch_ended:
        after_rollout(t.engine, enabled=cfg.rollout.sleep_between_steps)  # vLLM sleeps while training
    return assembled


def to_train_batch(t: Trainer, assembled: AssembledBatch) -> TrainBatch:
    groups: list[RolloutGroup] = assembled.payload
    # PRIME is on-policy: every group of the batch was sampled by the current policy weights.
    versions = {g.policy_version for g in groups}
    assert versions == {t.policy_version}, f"batch mixes policy versions {versions} (current {t.policy_version})"
    batch = train_batch_from_groups(groups, group_size=t.config.rollout.n, eos_ids=set(t.engine.eos_token_ids),
                                    pad_id=t.tokenizer.pad_token_id)
    # once here, on the host, what the kernels would check on the device per call (prime_step runs the
    # stages under kernels.trusted_values)
    check_batch_values(batch, vocab_size=unwrap_model(t.models.policy).real_vocab_size)
    return batch.to(parallel.device())  # the step's one host-to-device move


def old_logprobs(t: Trainer, batch: TrainBatch) -> OldLogprobs:
    """log pi_old of the sampled tokens, recomputed by the trainer at the rollout temperature."""
    logp = batch_logprobs(t.models.policy, batch, budget=t.config.train.micro_batch_tokens,
                          temperature=t.config.rollout.temperature)
    mean, worst = logprob_mismatch_on_device(batch.vllm_logp, logp, batch.response_mask)
    return OldLogprobs(logp, DeviceMetrics({"logprob_mismatch": mean, "logprob_mismatch_max": worst}))


def refit(t: Trainer) -> dict[str, float]:
    """Push the updated policy into vLLM (bucketed, in place) so the next rollout samples from it; with
    rollout.sleep_between_steps: wake vLLM's weights, sync, release the trainer's cache, wake the KV cache."""
    stats = refit_and_wake(t.engine, t.models.policy, bucket_mb=t.config.rollout.refit_bucket_mb,
                           enabled=t.config.rollout.sleep_between_steps)
    t.policy_version += 1
    return {"refit_gb_per_s": stats.gb_per_s}


def prime_step(t: Trainer, step: int) -> dict[str, float]:
    """One PRIME step, stage by stage; its metrics stay on the device until the one read at the end."""
    cfg, clock, metrics = t.config, StageClock(), DeviceMetrics()
    t0 = time.perf_counter()
    assembled = collect_rollouts(t, step, clock)
    if assembled.epoch_ended:
        if assembled.n_fetches > 1 or assembled.starved:
            t.run.console.print(
                f"step {step}: the epoch ended while the filter was filling the batch: {assembled.n_passed_groups} "
                f"of {cfg.data.prompts_per_step} groups passed in {assembled.n_fetches} fetches")
        return {}
    metrics.update(assembled.metrics())
    batch = to_train_batch(t, assembled)
    with trusted_values():  # the batch's values were checked on the host: no per-call device reads
        _train_on_batch(t, step, batch, assembled, clock, metrics)
    metrics.put("train_acc", batch.outcome.mean())
    elapsed = time.perf_counter() - t0
    n_tokens = float(sum(batch.seq_lens))
    return {
        **metrics.read(),  # the step's one device-to-host read of its metrics
        "response_len": sum(batch.response_lens) / batch.rows,
        "tokens": n_tokens,
        "tokens_per_s": n_tokens / elapsed,
        "tokens_per_s_per_gpu": n_tokens / elapsed / t.run.layout.world_size,
        "time/step": elapsed,
        **{f"time/{k}": v for k, v in clock.seconds.items()},
        **peak_memory_metrics(),
    }


def _train_on_batch(t: Trainer, step: int, batch: TrainBatch, assembled: AssembledBatch, clock: StageClock,
                    metrics: DeviceMetrics) -> None:
    """The stages after the rollout, in order: old log-probs, PRM, (localisation), advantages, policy
    update, refit; each adds its metrics (still on the device) to `metrics`."""
    cfg = t.config
    with timed(t, clock, "old_logp"):
        old = old_logprobs(t, batch)
    metrics.update(old.metrics)
    scores = None
    if cfg.prime.mode == "prime":
        with timed(t, clock, "prm"):
            t.on_stage("prm", step)
            scores = prm_stage(t.models, batch, cfg, old_logp=old.logp)
        metrics.update(scores.metrics)
        if t.labeller is not None:  # measurement only: where the PRM's lowest step reward falls
            with timed(t, clock, "localisation"):
                metrics.update(localisation_stage(t.labeller, assembled.payload, scores, batch, t.tokenizer,
                                                  beta=cfg.prime.beta).metrics())
    with timed(t, clock, "advantage"):
        adv = advantage_stage(batch, cfg, old_logp=old.logp,
                              token_rewards=scores.token_rewards if scores is not None else None)
    metrics.update(adv.metrics)
    with timed(t, clock, "policy"):
        t.on_stage("policy", step)
        metrics.update(policy_stage(t.models, batch, cfg, PolicyTargets(old.logp, adv.advantages), step=step))
    with timed(t, clock, "refit"):
        metrics.update(refit(t))


def save_checkpoint(t: Trainer, step: int) -> None:
    models, optims, scheds = t.models.checkpoint_parts()
    t.checkpoints.save(step, models=models, optimizers=optims, schedulers=scheds,
                       trainer_state={"step": step, "loader": t.loader.state_dict()})


def resume(t: Trainer) -> int:
    """Restore the latest (or the requested) checkpoint; returns the last completed step (0 = fresh)."""
    if t.run.layout.is_rank0:
        for name in t.checkpoints.remove_leftovers():
            t.run.console.print(f"removed {name} (left by an interrupted checkpoint save)")
    parallel.barrier()
    path = t.resume_from
    if path is None:
        # a fresh start (resume=none, or no complete checkpoint yet) in a directory that may hold an older
        # run: its metrics and checkpoints would otherwise mix with this run's
        t.run.logger.truncate_after(0)
        t.checkpoints.discard_after(0)
        return 0
    models, optims, scheds = t.models.checkpoint_parts()
    # At another layout the weights, optimizer state and schedule reshard; the per-rank RNG streams cannot
    # follow (nothing in a step draws from them outside vLLM, which is seeded per step)
    change = layout_change(path)
    state = t.checkpoints.load(path, models=models, optimizers=optims, schedulers=scheds, rng=change is None)
    t.loader.load_state_dict(state["loader"])
    step = int(state["step"])
    # resuming from an older checkpoint abandons the later steps: their metrics and checkpoints go
    t.run.logger.truncate_after(step)
    t.checkpoints.discard_after(step)
    refit(t)  # vLLM starts from the SFT weights: give it the restored policy
    how = f"; resharded: {change}" if change else ""
    t.run.console.print(f"resumed from {path} (step {step}{how})")
    return step


def build_trainer(config: Config, on_stage: StageHook = no_stage_hook) -> Trainer:
    from transformers import AutoTokenizer

    run = start_run(config)
    checkpoints = CheckpointManager(run.dir, keep_last=config.train.keep_last)
    resume_from = checkpoints.resolve(config.run.resume)  # a bad --resume fails here, before any model
    records = prompt_records(config)  # bad data too
    sft_path = starting_model(run, resuming=resume_from is not None)
    tokenizer = AutoTokenizer.from_pretrained(str(sft_path))
    loader = prompt_loader(config, records, tokenizer, log=run.console.print)
    models = build_prime_models(config, sft_path)
    r = config.rollout
    engine = RolloutEngine(sft_path, tp_size=r.tp, dtype=r.dtype, max_model_len=r.max_model_len,
                           seed=config.train.seed, kv_cache_gib=r.kv_cache_gib,
                           gpu_memory_utilization=r.gpu_memory_utilization, enable_sleep=r.sleep_between_steps)
    return Trainer(run=run, models=models, engine=engine, rollout=RolloutStage(engine, tokenizer, config),
                   loader=loader, tokenizer=tokenizer, checkpoints=checkpoints, resume_from=resume_from,
                   labeller=step_labeller(config), on_stage=on_stage)


@dataclass
class TrainOutcome:
    history: list[dict[str, float]]  # the steps run by this call
    last_step: int                   # the last completed step of the run (resumed ones included)


def train(config: Config, on_stage: StageHook = no_stage_hook) -> TrainOutcome:
    from . import third_party_logs
    from .interrupts import reraise_pending

    try:
        t = build_trainer(config, on_stage)
        cfg, console, logger = t.config, t.run.console, t.run.logger
        history = []
        start = 0
        try:
            start = resume(t)
            if start >= cfg.train.steps:
                console.print(f"the run is already complete (step {start} of train.steps={cfg.train.steps}); "
                              f"raise train.steps to continue it")
            for step in range(start + 1, cfg.train.steps + 1):
                reraise_pending()  # a Ctrl-C that arrived while a checkpoint writer forked stops the run here
                metrics = prime_step(t, step)
                if not metrics:
                    console.print(f"step {step}: the prompt data ran out (epoch ended); stopping")
                    break
                metrics.update(validation_stage(t.engine, t.tokenizer, cfg, step))
                logger.log(step, metrics)
                console.step_summary(step, metrics)
                history.append({"step": step, **metrics})
                if cfg.train.checkpoint_every and (step % cfg.train.checkpoint_every == 0
                                                   or step == cfg.train.steps):
                    save_checkpoint(t, step)
        finally:
            close_engine(t.engine)  # also on errors: vLLM must shut down while the process groups exist
        finish(t, history)
        return TrainOutcome(history, history[-1]["step"] if history else start)
    finally:
        third_party_logs.restore()  # start_run sent the libraries' logs to run.dir/third_party.log


def finish(t: Trainer, history: list[dict[str, float]]) -> None:
    from .metrics_log import read_metrics
    from .plots import plot_curves

    t.run.logger.close()
    if t.run.layout.is_rank0 and t.run.logger.path.is_file():
        plot_curves(t.run.logger.path, t.run.dir / "curves.png")
        records = read_metrics(t.run.logger.path)  # the whole run, also across resumes
        t.run.console.final_table(records)
        t.run.console.learning_table(records)
        t.run.console.print(f"run directory: {t.run.dir} (metrics.jsonl, curves.png, checkpoints/, TensorBoard)")


def close_engine(engine: RolloutEngine) -> None:
    """Shut vLLM down while the process groups it shares with the trainer still exist (its exit-time
    finalizer would otherwise try to destroy groups after parallel.shutdown() removed the world)."""
    close = getattr(engine, "close", None)
    if close is not None:
        close()
        return
    engine.llm.llm_engine.engine_core.shutdown()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="primeflow train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (default: the embedded tiny CPU run)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set ppo.clip=0.2 (repeatable)")
    parser.add_argument("--resume", help="auto | none | a checkpoint dir | a step (same as --set run.resume=...)")
    return parser.parse_args(argv)


def main(argv: list[str], on_stage: StageHook = no_stage_hook) -> int:
    args = parse_args(argv)
    overrides = list(args.set) + ([f"run.resume={args.resume}"] if args.resume else [])
    try:
        config = load_config(args.config, overrides)
    except ConfigError as error:
        print(f"primeflow train: bad config: {error}", file=sys.stderr)
        return 2
    from .interrupts import ctrl_c_guard

    try:
        with ctrl_c_guard():
            outcome = train(config, on_stage)
    except (CheckpointError, RunDirInUse, StaleSFTModel) as error:  # one line, nothing overwritten
        print(f"primeflow train: {error}", file=sys.stderr)
        return 2
    except DataError as error:
        print(f"primeflow train: bad data: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        import errno

        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # (a full disk during a checkpoint save is a CheckpointError, named by the checkpoint manager)
        print(f"primeflow train: disk full: {error.filename or config.run.dir}: {error.strerror}; free space "
              "there, or put run.dir on another disk", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        import os

        # Ctrl-C: a traceback would only show where the signal landed; say what survives and how to go on
        checkpoints = CheckpointManager(config.run.dir)
        latest = checkpoints.latest()
        if latest is None:
            saved = (f"no checkpoint was saved yet (train.checkpoint_every={config.train.checkpoint_every}): "
                     f"the next run starts at step 1")
        else:
            saved = f"saved: checkpoint step {latest} ({checkpoints.step_dir(latest)}); resume with --resume auto"
        if os.environ.get("RANK", "0") == "0":  # torchrun interrupts every rank: one line, not one per rank
            print(f"primeflow train: interrupted; {saved}", file=sys.stderr)
        return 130
    finally:
        from .verifiers import close_verifiers

        close_verifiers()
        parallel.shutdown()
    # 1 only when nothing could be trained (the data ran out before the first step); a complete run is 0
    return 0 if outcome.history or outcome.last_step >= config.train.steps else 1

