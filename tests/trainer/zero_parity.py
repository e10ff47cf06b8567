"""parallel.distributed_optimizer under torchrun (DP=N over gloo), run by test_distributed_optimizer.py.

    torchrun --nproc-per-node N tests/trainer/zero_parity.py --out RESULT.json CKPT

Two copies of the tiny policy take the same optimizer steps from the same DP-summed gradients: one with plain
AdamW, one with the sharded optimizer (make_optimizer(shard_over_dp=True)). After every step their parameters
must be bitwise equal on every rank. Then the sharded state goes through the checkpoint path
(checkpoint_parts' consolidation, state_dict on DP rank 0, a file, load_state_dict into a fresh sharded
optimizer on every rank), and one more step must again equal plain AdamW's. Rank 0 writes RESULT.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.distributed as dist
from primeflow.trainer import parallel
from primeflow.trainer.config import OptimConfig
from primeflow.trainer.grads import reduce_across_dp, trainable
from primeflow.trainer.models_setup import PrimeModels, load_model, make_optimizer

CFG = OptimConfig(lr=1e-3, weight_decay=0.01, warmup_steps=2, grad_clip=1.0)


def fake_grads(params: list[torch.nn.Parameter], step: int) -> None:
    """Rank-dependent gradients, then the trainer's own DP sum (as after a backward on each rank's rows)."""
    generator = torch.Generator().manual_seed(1000 * step + dist.get_rank())
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator, dtype=p.dtype)
    reduce_across_dp(params)


def step_both(pairs, optims, scheds, step: int) -> None:
    for params in pairs:
        fake_grads(params, step)  # same seeds: both copies get identical gradients
    for optim, sched in zip(optims, scheds, strict=True):
        optim.step()
        sched.step()


def max_diff(a: list[torch.nn.Parameter], b: list[torch.nn.Parameter]) -> float:
    return max(float((x.detach() - y.detach()).abs().max()) for x, y in zip(a, b, strict=True))


def moments_held(optim) -> int:
    local = optim.optim if hasattr(optim, "optim") else optim
    return sum(s["exp_avg"].numel() for s in local.state.values())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("ckpt", type=Path)
    args = ap.parse_args()
    layout = parallel.init_distributed(tp=1, pp=1, backend="gloo")
    plain_model = load_model(args.ckpt, role="policy", dtype="float32")
    zero_model = load_model(args.ckpt, role="policy", dtype="float32")
    plain, plain_sched = make_optimizer(plain_model, CFG)
    zero, zero_sched = make_optimizer(zero_model, CFG, shard_over_dp=True)
    assert type(zero).__name__ == "ZeroRedundancyOptimizer", type(zero)
    pairs = [trainable(plain_model), trainable(zero_model)]
    diffs = []
    for step in range(1, 4):
        step_both(pairs, [plain, zero], [plain_sched, zero_sched], step)
        diffs.append(max_diff(*pairs))
    moved = max_diff(pairs[0], trainable(load_model(args.ckpt, role="policy", dtype="float32")))

    # Checkpoint round trip through the trainer's consolidation.
    parts = PrimeModels(policy=zero_model, prm=None, ref=None, policy_optim=zero, policy_sched=zero_sched,
                        prm_optim=None, prm_sched=None).checkpoint_parts()
    path = args.out.parent / "zero_optim.pt"
    if layout.dp_rank == 0:
        torch.save(parts[1]["policy"].state_dict(), path)
    dist.barrier()
    resumed, resumed_sched = make_optimizer(zero_model, CFG, shard_over_dp=True)
    resumed.load_state_dict(torch.load(path, weights_only=False))
    resumed_sched.load_state_dict(zero_sched.state_dict())
    step_both(pairs, [plain, resumed], [plain_sched, resumed_sched], 4)
    diffs.append(max_diff(*pairs))

    total = sum(p.numel() for p in pairs[1])
    held = torch.tensor([moments_held(resumed)])
    dist.all_reduce(held)
    result = {"diffs": diffs, "moved": moved, "total_params": total, "moments_this_rank": moments_held(resumed),
              "moments_all_ranks": int(held), "plain_moments": moments_held(plain), "dp": layout.dp}
    if dist.get_rank() == 0:
        args.out.write_text(json.dumps(result))
    parallel.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
