"""Training-step cost on megatron-core's machinery: bf16 (fp32 masters) vs fp32, and DDP's bucketed gradient
reduction vs the flat all-reduce primeflow used before (torch.cat of every .grad + one all-reduce).

Run from the repository root (CPU: gloo; GPU: NCCL, same commands under torchrun on a GPU node):
    .venv/bin/python -m bench.bench_train_step --size tiny --out bench/results/cpu_train_step.json
    torchrun --nproc-per-node 2 -m bench.bench_train_step --size 60M --grad-sync \\
        --out bench/results/cpu_grad_sync_dp2.json

Step mode: one policy optimizer step (`stages.optim_step.minibatch_step`: packed micro-batches, PPO-clip
backward, DDP reduction, Megatron clip + AdamW) on random rollouts (16 rows of 64-192 tokens, micro-batches
of <= 512 tokens) for each dtype, interleaved over --repeats rounds after one warm-up step; min and median
seconds, and the bf16/fp32 ratio of the medians.
Grad-sync mode (DP >= 2): backward of the same micro-batches, then the gradient reduction, two ways on the
same weights: megatron-core DDP (fp32 buffer, buckets reduced while backward runs, `finalize_model_grads`),
and the baseline: plain .grad tensors, torch.cat into one flat fp32 tensor, one all-reduce, copy back.
Reported per way: seconds for backward + reduction (min/median over --repeats), and the bytes held for
gradients at the reduction's peak (DDP: its grad buffer; baseline: the .grad tensors + the flat copy), from
the tensors' sizes. Writes JSON from rank 0 (bench/hardware.write_json_atomic).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from bench.bench_refit import SIZES
from bench.hardware import environment, write_json_atomic


def checkpoint_of_size(size: str, root: Path) -> Path:
    from primeflow.models import make_tiny_checkpoint

    overrides = {k: v for k, v in SIZES[size].items()}
    overrides["intermediate_size"] = overrides.pop("ffn_hidden_size")
    overrides["num_hidden_layers"] = overrides.pop("num_layers")
    overrides["num_key_value_heads"] = overrides.pop("num_query_groups")
    return make_tiny_checkpoint(root / size, seed=0, **overrides)


def random_rollouts(vocab: int, rows: int = 16, seed: int = 0):
    from primeflow.trainer import parallel
    from primeflow.trainer.batch import build_train_batch

    rng = random.Random(seed)
    prompts = [[rng.randrange(vocab) for _ in range(rng.randrange(32, 64))] for _ in range(rows)]
    responses = [[rng.randrange(vocab) for _ in range(rng.randrange(32, 128))] for _ in range(rows)]
    batch = build_train_batch(prompts, responses, [[0.0] * len(r) for r in responses], ["length"] * rows,
                              [float(i % 2) for i in range(rows)], group_size=4, eos_ids=set(), pad_id=0)
    return batch.to(parallel.device())


def _ppo_inputs(model, batch):
    """PolicyTargets for the batch: old log-probs near the model's, random advantages."""
    from primeflow.trainer.stages.logprobs import batch_logprobs
    from primeflow.trainer.stages.results import PolicyTargets

    g = torch.Generator().manual_seed(1)
    current = batch_logprobs(model, batch, budget=4096)
    noise = (torch.rand(current.shape, generator=g) - 0.5).to(current.device)
    return PolicyTargets(old_logp=torch.where(batch.response_mask, current + noise, 0.0),
                         advantages=torch.randn(current.shape, generator=g).to(current.device))


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _trained(ckpt: Path, dtype: str):
    from primeflow.trainer.config import OptimConfig, ParallelConfig
    from primeflow.trainer.models_setup import trained_model

    return trained_model(ckpt, role="policy", dtype=dtype, optim=OptimConfig(lr=1e-6, grad_clip=1.0),
                         parallel_cfg=ParallelConfig())


def step_mode(ckpt: Path, vocab: int, repeats: int) -> dict:
    from primeflow.trainer.config import Config
    from primeflow.trainer.stages.logprobs import micro_batch_plan
    from primeflow.trainer.stages.optim_step import minibatch_step
    from primeflow.trainer.stages.policy import ppo_micro_loss

    config = Config()
    setups = {}
    for dtype in ("float32", "bfloat16"):
        model, optim, _ = _trained(ckpt, dtype)
        batch = random_rollouts(vocab)
        targets = _ppo_inputs(model, batch)
        rows = list(range(batch.rows))
        setups[dtype] = (model, optim, batch, targets, rows, micro_batch_plan(batch, rows, 512))
    times: dict[str, list[float]] = {d: [] for d in setups}
    for round_ in range(repeats + 1):
        for dtype, (model, optim, batch, targets, rows, plan) in setups.items():
            _sync()
            t0 = time.perf_counter()
            minibatch_step(model, optim, plan, ppo_micro_loss(model, batch, targets, config, rows))
            _sync()
            if round_ > 0:  # round 0 warms up
                times[dtype].append(time.perf_counter() - t0)
    out = {d: {"min_s": min(t), "median_s": statistics.median(t), "micro_batches": len(setups[d][5])}
           for d, t in times.items()}
    out["bf16_over_fp32_median"] = out["bfloat16"]["median_s"] / out["float32"]["median_s"]
    return out


def _flat_all_reduce(params: list[torch.nn.Parameter]) -> int:
    """The old trainer/grads.py reduction; returns the bytes held at its peak (.grad + flat copy)."""
    import torch.distributed as dist
    from primeflow.trainer import parallel

    flat = torch.cat([p.grad.reshape(-1).float() for p in params])
    held = sum(p.grad.numel() * p.grad.element_size() for p in params) + flat.numel() * flat.element_size()
    dist.all_reduce(flat, group=parallel.dp_group())
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n
    return held


def grad_sync_mode(ckpt: Path, vocab: int, repeats: int) -> dict:
    from primeflow.trainer import parallel
    from primeflow.trainer.config import Config
    from primeflow.trainer.models_setup import load_model
    from primeflow.trainer.optimizer import finalize_grads
    from primeflow.trainer.stages.logprobs import forward_rows, micro_batch_plan
    from primeflow.trainer.stages.policy import ppo_micro_loss

    config = Config()
    ddp_model, optim, _ = _trained(ckpt, "float32")
    plain = load_model(ckpt, role="policy", dtype="float32")
    params = [p for p in plain.parameters() if p.requires_grad]
    batch = random_rollouts(vocab)  # the global batch (the same on every rank; micro_batch_plan shares the rows out)
    targets = _ppo_inputs(ddp_model, batch)
    rows = list(range(batch.rows))
    plan = micro_batch_plan(batch, rows, 512)
    loss = ppo_micro_loss(ddp_model, batch, targets, config, rows)

    def backward(model, last_sync: bool) -> None:
        for i, micro in enumerate(plan):
            quiet = model.no_sync() if (last_sync and i < len(plan) - 1) else contextlib.nullcontext()
            with quiet:
                loss.share(micro, forward_rows(model, batch, micro)).backward()

    def ddp_once() -> int:
        optim.zero_grad()
        backward(ddp_model, last_sync=True)
        finalize_grads(ddp_model)
        return sum(b.grad_data.numel() * b.grad_data.element_size() for b in ddp_model.buffers)

    def flat_once() -> int:
        for p in params:
            p.grad = None
        backward(plain, last_sync=False)
        return _flat_all_reduce(params)

    times: dict[str, list[float]] = {"megatron_ddp": [], "flat_all_reduce": []}
    held: dict[str, int] = {}
    for round_ in range(repeats + 1):
        for name, fn in (("megatron_ddp", ddp_once), ("flat_all_reduce", flat_once)):
            parallel.barrier()
            _sync()
            t0 = time.perf_counter()
            held[name] = fn()
            _sync()
            if round_ > 0:
                times[name].append(time.perf_counter() - t0)
    n_params = sum(p.numel() for p in params)
    return {name: {"min_s": min(t), "median_s": statistics.median(t), "grad_bytes_at_peak": held[name],
                   "bytes_per_param": held[name] / n_params} for name, t in times.items()} | {
        "params": n_params, "dp": parallel.layout().dp, "micro_batches_rank0": len(plan)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--grad-sync", action="store_true", help="DDP vs flat all-reduce (run under torchrun, DP >= 2)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    from primeflow.trainer import parallel

    layout = parallel.init_distributed()
    shared = [tempfile.mkdtemp(prefix="bench_train_step_") if layout.is_rank0 else None]
    dist.broadcast_object_list(shared, src=0)  # one checkpoint directory for every rank (one node)
    root = Path(shared[0])
    try:
        if layout.is_rank0:
            checkpoint_of_size(args.size, root)
        parallel.barrier()
        ckpt = root / args.size
        vocab = SIZES[args.size]["vocab_size"]
        if args.grad_sync:
            if layout.dp < 2:
                raise SystemExit("--grad-sync needs DP >= 2: run it under torchrun --nproc-per-node 2")
            result = grad_sync_mode(ckpt, vocab, args.repeats)
        else:
            result = step_mode(ckpt, vocab, args.repeats)
        parallel.barrier()
    finally:
        if layout.is_rank0:
            shutil.rmtree(root, ignore_errors=True)
    if layout.is_rank0:
        write_json_atomic(args.out, {"kind": "grad_sync" if args.grad_sync else "train_step", "size": args.size,
                                     "repeats": args.repeats, "result": result, "environment": environment()})
        print(result)
    parallel.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
