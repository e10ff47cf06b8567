"""The checkpoint code's view of the ranks: the running layout, object collectives, and agreement on failure
(an error on any rank is raised on every rank, so no rank is left waiting in the next collective)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.distributed as dist

from ..parallel import ParallelLayout
from .errors import CheckpointDiskFull, CheckpointError, disk_full


def current_layout() -> ParallelLayout:
    """The run's layout from trainer.parallel; a 1-rank layout when torch.distributed is not started."""
    if not dist.is_initialized():
        return ParallelLayout(world_size=1, rank=0, tp=1, pp=1, dp=1, tp_rank=0, pp_rank=0, dp_rank=0)
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        from ..parallel import layout

        return layout()
    world, rank = dist.get_world_size(), dist.get_rank()  # a world without model parallelism: pure DP
    return ParallelLayout(world_size=world, rank=rank, tp=1, pp=1, dp=world, tp_rank=0, pp_rank=0, dp_rank=rank)


def is_multi() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def all_gather(obj: Any) -> list[Any]:
    if not is_multi():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any) -> Any:
    if not is_multi():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def agreed(what: str, fn: Callable[[], Any]) -> Any:
    """Run `fn` on every rank; if it failed anywhere, raise CheckpointError on every rank with all messages
    (a rank failing alone would otherwise leave the others waiting in the next collective)."""
    try:
        result, error = fn(), None
    except Exception as exc:  # noqa: BLE001 - reported to every rank below
        full = disk_full(exc)
        if not is_multi():
            if isinstance(exc, CheckpointError) and (not full or isinstance(exc, CheckpointDiskFull)):
                raise
            raise (CheckpointDiskFull if full else CheckpointError)(f"{what}: {type(exc).__name__}: {exc}") from exc
        text = str(exc) if isinstance(exc, CheckpointError) else f"{type(exc).__name__}: {exc}"
        result, error = None, (text, full)
    errors = [(r, e) for r, e in enumerate(all_gather(error)) if e is not None]
    if errors:
        kind = CheckpointDiskFull if any(full for _, (_, full) in errors) else CheckpointError
        raise kind(f"{what}: " + "; ".join(f"[rank {r}] {text}" for r, (text, _) in errors))
    return result
