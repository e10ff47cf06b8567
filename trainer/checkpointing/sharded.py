"""megatron-core's dist_checkpointing for the Megatron parts of a checkpoint: reshardable across (TP, PP, DP).

A Megatron model (anything with `sharded_state_dict`, i.e. a `MegatronModule`) and its megatron-core
optimizer (`trainer.optimizer.MegatronAdamW`) are saved together as one dist_checkpointing directory per
name, `dist/<name>/`, in the `torch_dist` format:
  * every tensor is a ShardedTensor: its slice of a global tensor, so a load at another TP/PP/DP layout reads
    the slices it needs from whichever files hold them;
  * the save is fully parallel: replicated tensors (DP replicas, TP-replicated norms) are spread over the DP
    ranks by `FullyParallelSaveStrategyWrapper` instead of all being written by DP rank 0, so every rank
    writes about 1/world of the bytes (`__<rank>_<n>.distcp` files), and rank 0 adds `.metadata`,
    `common.pt` and `metadata.json`.
One directory per name because megatron-core names the distributed optimizer's non-tensor state after its
DP group (`optimizer.distributed.dp_group_idx_<i>...`): the policy's and the PRM's would collide in one.

The optimizer's layout dependence is the sharding type (`parallel.optimizer_checkpoint`, see
MegatronAdamW.sharded_state_dict): without the distributed optimizer, and with `fully_reshardable`, the state
is in model space (any layout can load it); `dp_reshardable` saves the distributed optimizer's flat buffers
as they are (no gather, the fastest save) and can only be loaded at the same TP and PP.

The save runs synchronously, in the trainer's process (megatron-core's writer forks one short-lived writer
per file bucket and joins them before the save returns). See `_in_process_results_queue` for the one part of
megatron-core's writer that is replaced.
"""

from __future__ import annotations

import os
import queue
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

DIST_DIR = "dist"


def is_sharded_model(model: Any) -> bool:
    """Whether `model` is saved through dist_checkpointing (a Megatron module), not as a torch.save shard."""
    return callable(getattr(model, "sharded_state_dict", None))


def is_sharded_optimizer(optimizer: Any) -> bool:
    return callable(getattr(optimizer, "sharded_state_dict", None)) and callable(
        getattr(optimizer, "load_sharded_state_dict", None))


def _state(model: torch.nn.Module, optimizer: Any | None, *, is_loading: bool, sharding: str | None = None
           ) -> dict[str, Any]:
    from primeflow.models.compat import enable_cpu_megatron

    enable_cpu_megatron()  # dist_checkpointing's CUDA-only bookkeeping (a no-op on GPU machines)
    model_state = model.sharded_state_dict()
    state: dict[str, Any] = {"model": model_state}
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(model_state, is_loading=is_loading, sharding=sharding)
    return state


def _in_process_results_queue() -> None:
    """Give megatron-core's writer an in-process queue for its write results.

    FileSystemWriterAsync creates that queue on first use as a `spawn` multiprocessing Manager: a server
    process that does not watch its parent. A SIGKILLed trainer left it behind, one orphan per crash, holding
    the trainer's stdout and stderr open (a launcher reading them waited forever), and it needs the launching
    script's `if __name__ == "__main__":` guard. The queue is filled and drained by the process that calls
    `dist_checkpointing.save` (synchronous saves run the writer in the caller), so a plain queue.Queue
    carries the same results. Asynchronous saves, which primeflow does not use, would need the Manager."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if not isinstance(filesystem_async._results_queue, queue.Queue):
        filesystem_async._results_queue = queue.Queue()


def save(directory: Path, model: torch.nn.Module, optimizer: Any | None) -> None:
    """Collective: write `model` (and `optimizer`) into the new directory `directory` (created by rank 0)."""
    from megatron.core import dist_checkpointing, parallel_state
    from megatron.core.dist_checkpointing.serialization import get_default_save_sharded_strategy
    from megatron.core.dist_checkpointing.strategies.fully_parallel import FullyParallelSaveStrategyWrapper

    if dist.get_rank() == 0:
        directory.mkdir(parents=True)
    dist.barrier()
    state = _state(model, optimizer, is_loading=False)
    _in_process_results_queue()
    strategy = FullyParallelSaveStrategyWrapper(get_default_save_sharded_strategy("torch_dist"),
                                                parallel_state.get_data_parallel_group(with_context_parallel=True))
    dist_checkpointing.save(state, str(directory), sharded_strategy=strategy)


def load(directory: Path, model: torch.nn.Module, optimizer: Any | None, *, sharding: str | None = None) -> None:
    """Collective: fill `model` (and `optimizer`, saved with sharding type `sharding`) from `directory`, at
    this run's layout. Every tensor the model or optimizer holds must be in the checkpoint (a missing one
    raises); saved entries not asked for (the optimizer, when only the model is loaded) are skipped."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.validation import StrictHandling

    state = _state(model, optimizer, is_loading=True, sharding=sharding)
    loaded = dist_checkpointing.load(state, str(directory), strict=StrictHandling.RAISE_UNEXPECTED)
    model.load_state_dict(loaded["model"], strict=True)
    if optimizer is not None:
        optimizer.load_sharded_state_dict(loaded["optimizer"])


def files_written_by(directory: Path, rank: int) -> list[Path]:
    """The files of a dist checkpoint directory that `rank` wrote (its `__<rank>_*.distcp` shards; rank 0
    also the metadata and the common state), so that each rank hashes only its own bytes."""
    mine = sorted(directory.glob(f"__{rank}_*.distcp"))
    if rank == 0:
        mine += sorted(p for p in directory.iterdir() if p.is_file() and not p.name.endswith(".distcp"))
    return mine


def relative(path: Path, root: Path) -> str:
    return os.path.relpath(path, root)
