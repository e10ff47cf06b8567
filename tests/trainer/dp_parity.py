"""megatron-core DDP + optimizer under DP (run by test_data_parallel.py, once per process count):

    python tests/trainer/dp_parity.py --out RESULT.pt CKPT                          # DP=1
    torchrun --nproc-per-node 2 tests/trainer/dp_parity.py --out RESULT.pt CKPT     # DP=2

On one global batch of random rollouts, for each optimizer layout (plain, distributed) and weight dtype
(fp32; bf16 with fp32 masters): the policy's PPO gradients (DDP's fp32 buffer after finalize_model_grads)
and one AdamW step from the trainer's own `minibatch_step`. Each DP rank computes its share of the rows
(a rank may get none: it then runs the idle-rank backward). The distributed optimizer's state then goes
through the checkpoint path (gather on every rank, state_dict on DP rank 0, a file, load on every rank into
a fresh optimizer) and one more step must equal the uninterrupted optimizer's bitwise. Rank 0 writes
RESULT.pt with everything the test compares.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch
import torch.distributed as dist
from primeflow.models import hf_state_dict, unwrap_model
from primeflow.trainer import parallel
from primeflow.trainer.checkpointing import CheckpointManager
from primeflow.trainer.config import OptimConfig, ParallelConfig, PPOConfig
from primeflow.trainer.models_setup import trained_model
from primeflow.trainer.stages.logprobs import batch_logprobs, micro_batch_plan
from primeflow.trainer.stages.optim_step import minibatch_step
from primeflow.trainer.stages.policy import ppo_micro_loss
from primeflow.trainer.stages.results import PolicyTargets

_spec = importlib.util.spec_from_file_location("stage_helpers", Path(__file__).with_name("stage_helpers.py"))
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)

LR = 1e-3
OPTIM = OptimConfig(lr=LR, weight_decay=0.01, warmup_steps=0, grad_clip=1.0)


class _Cfg:  # the two config sections ppo_micro_loss reads
    ppo = PPOConfig()
    rollout = type("R", (), {"temperature": 1.0})()


def _all_ranks_equal(t: torch.Tensor) -> bool:
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return all(torch.equal(parts[0], p) for p in parts)


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in hf_state_dict(model).items()}


def _moments_here(optim) -> int:
    """AdamW first-moment elements this rank holds (the distributed optimizer: its DP shard only)."""
    inner = optim._chained().optimizer
    return sum(s["exp_avg"].numel() for s in inner.state.values() if "exp_avg" in s)


def one_layout(ckpt: Path, batch, rows: list[int], budget: int, *, dtype: str, distributed: bool,
               workdir: Path) -> dict:
    pcfg = ParallelConfig(distributed_optimizer=distributed)
    model, optim, sched = trained_model(ckpt, role="policy", dtype=dtype, optim=OPTIM, parallel_cfg=pcfg)
    g = torch.Generator().manual_seed(7)
    current = batch_logprobs(model, batch, budget=budget)
    targets = PolicyTargets(
        old_logp=torch.where(batch.response_mask, current + (torch.rand(current.shape, generator=g) - 0.5), 0.0),
        advantages=torch.randn(current.shape, generator=g))
    plan = micro_batch_plan(batch, rows, budget)
    stats = minibatch_step(model, optim, plan, ppo_micro_loss(model, batch, targets, _Cfg, rows))
    grads = {k: v.clone() for k, v in hf_state_dict(model, grads=True).items()}
    after1 = _weights(model)
    flat = torch.cat([w.flatten().float() for w in after1.values()])
    out = {"grads": grads, "weights": after1, "grad_norm": stats.grad_norm, "loss": float(stats.loss),
           "ranks_equal": _all_ranks_equal(flat), "micro_batches_here": len(plan)}

    # checkpoint round trip (megatron-core's dist_checkpointing), then one more step from both
    checkpoints = CheckpointManager(workdir / f"run_{dtype}_{int(distributed)}")
    checkpoints.save(1, models={"policy": unwrap_model(model)}, optimizers={"policy": optim},
                     schedulers={"policy": sched}, trainer_state={}, rng=False)
    model2, optim2, sched2 = trained_model(ckpt, role="policy", dtype=dtype, optim=OPTIM, parallel_cfg=pcfg)
    checkpoints.load(1, models={"policy": unwrap_model(model2)}, optimizers={"policy": optim2},
                     schedulers={"policy": sched2}, rng=False)
    for m, o in ((model, optim), (model2, optim2)):
        minibatch_step(m, o, plan, ppo_micro_loss(m, batch, targets, _Cfg, rows))
    resumed, uninterrupted = _weights(model2), _weights(model)
    out["resume_bitwise"] = all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
    held = torch.tensor([_moments_here(optim2)])
    out["moments_here"] = int(held)
    dist.all_reduce(held)
    out["moments_all_ranks"] = int(held)
    out["n_params"] = sum(p.numel() for p in model.parameters())
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("ckpt", type=Path)
    args = ap.parse_args()
    layout = parallel.init_distributed(tp=1, pp=1, backend="gloo")
    results = {"dp": layout.dp}
    for dtype in ("float32", "bfloat16"):
        for distributed in (False, True):
            torch.manual_seed(args.seed)
            batch = helpers.random_rollouts(args.seed)
            # 12 rows: DP=2 ranks get 6 each, packed into micro-batches of 1-3 rows
            results[(dtype, distributed)] = one_layout(args.ckpt, batch, list(range(batch.rows)), 40, dtype=dtype,
                                                       distributed=distributed, workdir=args.out.parent)
    # one row for two ranks: rank 1 has no micro-batch and runs the idle-rank backward
    batch = helpers.random_rollouts(args.seed)
    results["one_row"] = one_layout(args.ckpt, batch, [5], 40, dtype="float32", distributed=False,
                                    workdir=args.out.parent)
    if layout.is_rank0:
        torch.save(results, args.out)
    parallel.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
