"""Checkpoint write and read of a training model at the Qwen2.5-0.5B shape through the trainer's own
`CheckpointManager` (issue 16, Measure: old format vs new).

Run from the repository root, the same script on two commits (one process = TP=1, DP=1; under torchrun
with --tp the other ranks are DP, and --distributed-optimizer shards the optimizer state over them):
    .venv/bin/python -m bench.bench_checkpoint --out bench/results/cpu_checkpoint_0.5B_<commit>.json
    .venv/bin/python -m torch.distributed.run --standalone --nproc-per-node 2 -m bench.bench_checkpoint \
        --distributed-optimizer --out bench/results/cpu_checkpoint_0.5B_dp2_<commit>.json

What is checkpointed is what the trainer checkpoints for the policy: the bf16 Megatron model inside
megatron-core DDP (`Float16Module`) and megatron-core's AdamW (fp32 main parameters, exp_avg, exp_avg_sq)
after one real update, its LR schedule, the RNG streams and a small trainer state. Per round: `save` (atomic
write, each file fsynced and hashed, manifest, rename), the checkpoint's bytes on disk, then `load` of the
same step into the same objects with the manifest's sha256 verification (the default) and with size-only
verification. On the commit before dist_checkpointing (a76c054) a save with the distributed optimizer
first gathers every DP shard's state to DP rank 0 (`gather_state`, as its trainer did), timed with it.
The page cache is dropped before each load when this process may (root): the read then comes from the
disk, as in a resume after a restart; `cold_read` in the output says whether it could.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from bench.bench_startup import _checkpoint
from bench.hardware import environment, write_json_atomic


def _drop_page_cache() -> bool:
    """Write back dirty pages and drop the page cache (needs root); False where not allowed."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _trained_policy(ckpt: Path, *, distributed: bool):
    """The policy as the trainer holds it after one update: (the Megatron model, its optimizer, whose `.model`
    is the DDP / Float16Module wrapper the forward goes through, the schedule)."""
    from primeflow.trainer.config import OptimConfig
    from primeflow.trainer.models_setup import load_model
    from primeflow.trainer.optimizer import finalize_grads, make_optimizer, wrap_for_training

    model = load_model(ckpt, role="policy", dtype="bfloat16")
    wrapped = wrap_for_training(model, distributed_optimizer=distributed)
    opt, sched = make_optimizer(wrapped, OptimConfig(lr=1e-6, warmup_steps=1), distributed=distributed)
    vocab = json.loads((ckpt / "config.json").read_text())["vocab_size"]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (2, 32), generator=gen)
    logp = wrapped(input_ids=ids, position_ids=torch.arange(32).expand(2, 32), attention_mask=None,
                 labels=torch.roll(ids, -1, 1))
    (-logp.float().mean()).backward()
    finalize_grads(wrapped)
    opt.step()
    sched.step()
    return model, opt, sched


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="0.5B")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--distributed-optimizer", action="store_true")
    ap.add_argument("--ckpt-dir", type=Path, default=Path(tempfile.gettempdir()) / "primeflow-bench-startup")
    ap.add_argument("--run-dir", type=Path, default=Path(tempfile.gettempdir()) / "primeflow-bench-checkpoint")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    from primeflow.trainer import parallel
    from primeflow.trainer.checkpointing import CheckpointManager

    layout = parallel.init_distributed(tp=args.tp, pp=1, backend="gloo")
    if layout.is_rank0:
        args.ckpt_dir.mkdir(parents=True, exist_ok=True)
        _checkpoint(args.size, args.ckpt_dir)
        shutil.rmtree(args.run_dir, ignore_errors=True)
    parallel.barrier()
    model, opt, sched = _trained_policy(_checkpoint(args.size, args.ckpt_dir), distributed=args.distributed_optimizer)
    parts = {"models": {"policy": model}, "optimizers": {"policy": opt}, "schedulers": {"policy": sched}}
    manager = CheckpointManager(args.run_dir, keep_last=None)
    rounds = []
    for step in range(1, args.rounds + 1):
        start = time.perf_counter()
        if hasattr(opt, "gather_state"):  # the old format's save: DP rank 0 first gathers every shard's state
            opt.gather_state()
        path = manager.save(step, **parts, trainer_state={"step": step, "loader": {"cursor": 3 * step}})
        saved = time.perf_counter()
        round_ = {"step": step, "save_s": saved - start, "bytes": _tree_bytes(path),
                  "files": sum(1 for f in path.rglob("*") if f.is_file())}
        for verify in ("sha256", "size"):
            cold = _drop_page_cache()
            parallel.barrier()
            start = time.perf_counter()
            manager.load(step, **parts, verify=verify)
            round_[f"load_{verify}_s"] = time.perf_counter() - start
            round_["cold_read"] = cold
        rounds.append(round_)
        print(json.dumps(round_), flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__import__("primeflow").__file__).resolve().parent).stdout.strip()
    if layout.is_rank0:
        write_json_atomic(args.out, {
            "what": "CheckpointManager save / load of the 0.5B-shaped bf16 policy + megatron-core AdamW",
            "size": args.size, "tp": layout.tp, "dp": layout.dp, "distributed_optimizer": args.distributed_optimizer,
            "primeflow_commit": commit,
            "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
            "rounds": rounds, "environment": environment()})
        shutil.rmtree(args.run_dir, ignore_errors=True)
    parallel.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
