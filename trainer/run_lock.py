"""One trainer per run directory: rank 0 holds an exclusive lock on `run.dir/.lock` for the whole run.

Two trainers writing one run directory would interleave metrics.jsonl and overwrite each other's
checkpoints. The lock is an flock on an open file: the kernel releases it when the process ends, however it
ends (SIGKILL included), so there is never a stale lock to clean up. The file records the holder's pid and
host for the message the second trainer prints. Every rank learns rank 0's outcome (one broadcast), so a
refused start ends the whole job with one line instead of leaving the other ranks waiting in a collective.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from typing import IO

import torch.distributed as dist

LOCK_NAME = ".lock"


class RunDirInUse(RuntimeError):
    """Another trainer holds the run directory."""


def _try_lock(run_dir: Path) -> tuple[IO | None, str | None]:
    handle = open(run_dir / LOCK_NAME, "a+")  # noqa: SIM115 (held open for the life of the run)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        return None, (f"run.dir {run_dir} is in use by another primeflow train ({holder}); wait for it to end "
                      "or choose another run.dir")
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return handle, None


def lock_run_dir(run_dir: Path, *, is_rank0: bool) -> IO | None:
    """Take the run directory's lock on rank 0 (returned: keep it referenced for the run); RunDirInUse on
    every rank when another trainer holds it."""
    handle, problem = _try_lock(run_dir) if is_rank0 else (None, None)
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [problem]
        dist.broadcast_object_list(box, src=0)
        problem = box[0]
    if problem is not None:
        raise RunDirInUse(problem)
    return handle
