"""Saves one dist_checkpointing checkpoint (a Megatron policy and its megatron-core optimizer, 1-rank gloo world),
prints SAVED, then SIGKILLs itself, as a trainer killed after a checkpoint does. test_crash.py checks that
nothing it started outlives it (megatron-core's writer once left a Manager server process behind).

    python kill_after_dist_save.py RUN_DIR
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
from pathlib import Path

import torch


def main(run_dir: str) -> None:
    from primeflow.models import make_tiny_checkpoint
    from primeflow.trainer.checkpointing import CheckpointManager
    from primeflow.trainer.parallel import init_distributed

    spec = importlib.util.spec_from_file_location("ckpt_helpers", Path(__file__).with_name("helpers.py"))
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    torch.set_num_threads(1)
    init_distributed(tp=1, pp=1, backend="gloo")
    ckpt = make_tiny_checkpoint(Path(run_dir) / "tiny", seed=3)
    models, opts, scheds = helpers.build_set(ckpt, init_seed=0, roles=("policy",))
    CheckpointManager(Path(run_dir) / "run", keep_last=2).save(
        1, models=models, optimizers=opts, schedulers=scheds, trainer_state={"step": 1})
    print("SAVED", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


main(sys.argv[1])  # no __main__ guard on purpose: a dist save must not need one
