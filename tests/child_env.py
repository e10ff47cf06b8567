"""The environment for a child process that must start its own torch.distributed world.

A test process may hold a gloo world of its own (an in-pytest test set RANK, MASTER_PORT, ...), and the kernel
tests may have set TRITON_INTERPRET=1: a child inheriting either would try to listen on a port already in use,
or run a trainer's kernels interpreted. Every test that launches a trainer, torchrun or a worker script takes
its environment from here."""

from __future__ import annotations

import os

WORLD_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TRITON_INTERPRET")


def fresh_world_env(*, drop: tuple[str, ...] = (), **extra: str) -> dict[str, str]:
    """os.environ without WORLD_VARS (and `drop`), with `extra` set on top."""
    gone = {*WORLD_VARS, *drop}
    env = {k: v for k, v in os.environ.items() if k not in gone}
    env.update(extra)
    return env
