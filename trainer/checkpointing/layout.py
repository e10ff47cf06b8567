"""Checkpoint layouts: the per-shard and per-rank file ids, how each named part is saved (Megatron models and
megatron-core optimizers through dist_checkpointing, plain torch parts as torch.save shards), and which change
of (TP, PP, DP) layout a load can follow."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..parallel import ParallelLayout
from . import sharded
from .errors import CheckpointError
from .manifest import read_manifest
from .ranks import current_layout


def shard_id(lay: ParallelLayout) -> str:
    return f"tp{lay.tp_rank:02d}-pp{lay.pp_rank:02d}"


def rank_id(lay: ParallelLayout) -> str:
    return f"rank{lay.rank:05d}-{shard_id(lay)}-dp{lay.dp_rank:03d}"


def layout_dict(lay: ParallelLayout) -> dict[str, int]:
    return {"world_size": lay.world_size, "tp": lay.tp, "pp": lay.pp, "dp": lay.dp}


@dataclasses.dataclass(frozen=True)
class Parts:
    """How each named part is saved: Megatron models (with their megatron-core optimizer, when they have
    one) through dist_checkpointing, plain torch modules and optimizers as torch.save shards."""

    sharded_models: tuple[str, ...]
    plain_models: tuple[str, ...]
    plain_optimizers: tuple[str, ...]
    sharded_optimizers: dict[str, dict[str, Any]]  # name -> MegatronAdamW.checkpoint_layout()


def split_parts(models: Mapping[str, Any], optimizers: Mapping[str, Any]) -> Parts:
    sharded_models = tuple(n for n, m in models.items() if sharded.is_sharded_model(m))
    sharded_optimizers, plain_optimizers = {}, []
    for name, opt in optimizers.items():
        if not sharded.is_sharded_optimizer(opt):
            plain_optimizers.append(name)
        elif name not in sharded_models:
            raise CheckpointError(f"optimizer {name!r} is megatron-core's: it is saved with model {name!r}, "
                                  "which must be a Megatron model (sharded_state_dict) passed under that name")
        else:
            sharded_optimizers[name] = opt.checkpoint_layout()
    plain_models = tuple(n for n in models if n not in sharded_models)
    return Parts(sharded_models, plain_models, tuple(plain_optimizers), sharded_optimizers)


def describe_layouts(saved: Mapping[str, int], lay: ParallelLayout) -> str:
    return (f"saved with layout tp={saved.get('tp')} pp={saved.get('pp')} dp={saved.get('dp')} (world "
            f"{saved.get('world_size')}), this run has tp={lay.tp} pp={lay.pp} dp={lay.dp} (world {lay.world_size})")


def check_layout(path: Path, manifest: dict[str, Any], parts: Parts, lay: ParallelLayout, *, rng: bool) -> None:
    """Refuse, naming the setting, a load whose parts cannot follow a change of layout."""
    saved = manifest["layout"]
    moved = [k for k in ("tp", "pp") if saved.get(k) != getattr(lay, k)]
    desc = describe_layouts(saved, lay)
    plain = sorted({*parts.plain_models, *parts.plain_optimizers})
    if moved and plain:
        raise CheckpointError(
            f"{path}: {desc}; {plain} are plain torch modules / optimizers, saved as torch.save shards of that "
            "TP/PP layout: resharding a checkpoint is not supported for them (Megatron models and megatron-core "
            "optimizers reshard): resume with the saved layout")
    saved_optimizers = manifest["components"].get("sharded_optimizers", {})
    for name, now in parts.sharded_optimizers.items():
        before = saved_optimizers.get(name)
        if before is None:
            raise CheckpointError(f"{path}: optimizer {name!r} was not saved as megatron-core sharded state")
        if before["distributed"] != now["distributed"]:
            raise CheckpointError(
                f"{path}: optimizer {name!r} was saved with parallel.distributed_optimizer="
                f"{str(before['distributed']).lower()}, this run has {str(now['distributed']).lower()}: resume "
                "with the saved value")
        if moved and before["sharding"] == "dp_reshardable":
            raise CheckpointError(
                f"{path}: {desc}; the distributed optimizer state of {name!r} was saved as dp_reshardable, which "
                f"can change DP only: resume at tp={saved.get('tp')} pp={saved.get('pp')}, or save with "
                "parallel.optimizer_checkpoint=fully_reshardable to change TP/PP")
    if rng and saved != layout_dict(lay):
        raise CheckpointError(f"{path}: {desc}; RNG states were saved per rank and cannot move to another "
                              "layout: load with rng=False")


def layout_change(path: Path) -> str | None:
    """How checkpoint `path`'s (TP, PP, DP) layout differs from the running one ("saved with layout tp=.. pp=..
    dp=.. (world ..), this run has ..."), or None when it was saved at this layout."""
    saved, lay = read_manifest(path)["layout"], current_layout()
    return None if saved == layout_dict(lay) else describe_layouts(saved, lay)
