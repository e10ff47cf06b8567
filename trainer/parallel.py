"""The one owner of process groups: torch.distributed world + Megatron-core parallel_state.

Everything else (rollout, trainer, checkpointing, tests) asks this module for ranks and groups; nothing
else calls `init_process_group` or `initialize_model_parallel`. Works the same under torchrun (reads RANK,
WORLD_SIZE, MASTER_ADDR/PORT) and in a plain single process (a 1-rank world on a free local port, never an
inherited MASTER_PORT), with gloo on CPU and NCCL on GPU. Collectives get a timeout so a dead rank ends the
job with an error, not a hang.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

BACKENDS = ("gloo", "nccl")


@dataclass(frozen=True)
class ParallelLayout:
    """This rank's place in the TP x PP x DP grid (Megatron order: TP fastest, then DP, then PP)."""

    world_size: int
    rank: int
    tp: int
    pp: int
    dp: int
    tp_rank: int
    pp_rank: int
    dp_rank: int

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_distributed(*, tp: int = 1, pp: int = 1, backend: str | None = None,
                     timeout_s: float = 1800.0) -> ParallelLayout:
    """Start (or reuse) the world and (re)build Megatron's TP/PP/DP groups; return this rank's layout.

    world_size must be a multiple of tp*pp; dp = world_size // (tp*pp). `timeout_s` bounds every collective
    (a rank that died makes the others fail after this long instead of hanging forever).

    Under torchrun (RANK in the environment) the world is torchrun's. Without RANK it is this one process, on
    127.0.0.1 and a free port, chosen every time: a MASTER_ADDR / MASTER_PORT / WORLD_SIZE / LOCAL_RANK left
    in the environment (an earlier torchrun's exports, another job's port) cannot describe a world that
    torchrun did not start, and reusing them failed on a port in use or waited on an unreachable address.
    They are overwritten (vLLM's external_launcher reads them to join this world).
    """
    from megatron.core import parallel_state

    backend = backend or default_backend()
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not allowed; allowed: {list(BACKENDS)}")
    for key, value in (("tp", tp), ("pp", pp)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"parallel.{key} must be a positive integer, got {value!r}")
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s)
        if "RANK" in os.environ:
            if backend == "nccl":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
            dist.init_process_group(backend, timeout=timeout)
        else:
            # a one-process world: never an inherited address or port (see the docstring)
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0", LOCAL_RANK="0",
                              WORLD_SIZE="1")
            dist.init_process_group(backend, rank=0, world_size=1, timeout=timeout)
    world = dist.get_world_size()
    if world % (tp * pp) != 0:
        raise ValueError(f"world size {world} is not a multiple of parallel.tp*parallel.pp = {tp}*{pp}")
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    return layout()


def device() -> torch.device:
    """This rank's compute device, the one place it is decided: cuda:LOCAL_RANK when the world runs NCCL,
    else the CPU. Models are built on it and each step's batch is moved to it once."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def synchronize() -> None:
    """Wait for the work queued on this rank's device (nothing to wait for on the CPU): the training loop
    calls it at stage boundaries only, so a stage's wall time includes its own kernels."""
    d = device()
    if d.type == "cuda":
        torch.cuda.synchronize(d)


def layout() -> ParallelLayout:
    """The current layout (after init_distributed)."""
    from megatron.core import parallel_state as ps

    return ParallelLayout(
        world_size=dist.get_world_size(), rank=dist.get_rank(),
        tp=ps.get_tensor_model_parallel_world_size(), pp=ps.get_pipeline_model_parallel_world_size(),
        dp=ps.get_data_parallel_world_size(), tp_rank=ps.get_tensor_model_parallel_rank(),
        pp_rank=ps.get_pipeline_model_parallel_rank(), dp_rank=ps.get_data_parallel_rank())


def tp_group():
    from megatron.core import parallel_state

    return parallel_state.get_tensor_model_parallel_group()


def dp_group():
    from megatron.core import parallel_state

    return parallel_state.get_data_parallel_group()


def pp_group():
    from megatron.core import parallel_state

    return parallel_state.get_pipeline_model_parallel_group()


def embedding_group():
    """First + last pipeline stage (tied input/output embeddings with PP > 1 keep one copy on each)."""
    from megatron.core import parallel_state

    return parallel_state.get_embedding_group()


def broadcast_from_last_stage(tensor: torch.Tensor) -> torch.Tensor:
    """In place: every stage of this rank's pipeline gets the last stage's `tensor` (model outputs, losses
    and metrics exist only on the last stage; the batch state must be identical on all ranks). No-op at
    PP=1."""
    from megatron.core import parallel_state

    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        dist.broadcast(tensor, src=parallel_state.get_pipeline_model_parallel_last_rank(), group=pp_group())
    return tensor


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Tear down Megatron's groups and the world (safe to call twice)."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
