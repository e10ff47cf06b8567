"""torchrun worker for test_checkpoint_disk_full.py: two gloo ranks save one checkpoint while rank 1's disk is
full (its checkpoint file writes raise ENOSPC); each rank writes what the save raised to outcome.<rank>.txt.

    torchrun --standalone --nproc-per-node 2 mp_disk_full.py RUN_DIR
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from primeflow.trainer.checkpointing import CheckpointManager, files
from primeflow.trainer.checkpointing.manager import CheckpointDiskFull


def _full_disk_write(self, data) -> int:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def main(run_dir: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    if rank == 1:
        files._HashingWriter.write = _full_disk_write
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    try:
        CheckpointManager(run_dir).save(1, models={"m": model}, optimizers={"m": opt}, schedulers={},
                                        trainer_state={"rank": rank})
        outcome = "saved"
    except CheckpointDiskFull as error:
        outcome = f"CheckpointDiskFull: {error}"
    except Exception as error:  # noqa: BLE001 - reported to the test
        outcome = f"{type(error).__name__}: {error}"
    dist.barrier()
    (run_dir / f"outcome.{rank}.txt").write_text(outcome)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
