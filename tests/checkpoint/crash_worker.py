"""Saves checkpoints in a loop for test_crash.py, which SIGKILLs the saving process at chosen points.

    python crash_worker.py RUN_DIR --steps 1000 --numel 250000   # no pauses: killed at a random time

`run(..., pause_step=s, emit=..., wait=...)`: every checkpoint event of step s (CheckpointManager's on_event) is
reported with `emit("<event> <path>")` and then `wait()` blocks until the parent says go on, so the parent
kills the process exactly there (test_crash.py calls it in a forked child). Model weights of step s are all
equal to s (and the optimizer's exp_avg to 2s), so the parent can check what a surviving checkpoint holds.
No torch.distributed collectives: the manager runs as a single rank.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from primeflow.trainer.checkpointing import CheckpointManager


def make(numel: int, step: float):
    model = torch.nn.Linear(numel, 1, bias=False)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10)
    with torch.no_grad():
        model.weight.fill_(step)
    opt.state[model.weight] = {"step": torch.tensor(float(step)), "exp_avg": torch.full_like(model.weight, 2 * step),
                               "exp_avg_sq": torch.full_like(model.weight, 3 * step)}
    return model, opt, sched


def run(run_dir: str, *, steps: int, numel: int = 64, keep_last: int = 2, pause_step: int | None = None,
        emit: Callable[[str], None] = print, wait: Callable[[], None] = lambda: None) -> None:
    current = {"step": 0}

    def hook(event, path):
        if current["step"] == pause_step:
            emit(f"{event} {path}")
            wait()

    mgr = CheckpointManager(run_dir, keep_last=keep_last, on_event=hook)
    for step in range(1, steps + 1):
        current["step"] = step
        model, opt, sched = make(numel, step)
        mgr.save(step, models={"m": model}, optimizers={"m": opt}, schedulers={"m": sched},
                 trainer_state={"step": step})
        emit(f"SAVED {step}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--numel", type=int, default=64)
    ap.add_argument("--keep-last", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    run(args.run_dir, steps=args.steps, numel=args.numel, keep_last=args.keep_last,
        emit=lambda s: print(s, flush=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
