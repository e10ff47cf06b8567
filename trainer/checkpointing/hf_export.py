"""export_hf: a run checkpoint's policy / PRM -> HF checkpoints (safetensors + config + tokenizer).

The Megatron models are rebuilt with `primeflow.models.build_model` from the ModelConfig, role and dtype the
manifest recorded, at the saved TP x PP layout (the shards are not resharded), filled from the shard files,
and written by `export_hf_checkpoint` (which gathers TP shards). Hence a checkpoint saved with tp*pp = 1
exports in one plain process, and one saved with tp*pp = n > 1 needs n processes: run it under
`torchrun --nproc-per-node n` (the `primeflow export` command re-launches itself that way on its own).
The saved DP size does not matter (DP replicas hold the same weights).
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch.distributed as dist

from .errors import CheckpointError
from .manager import CheckpointManager
from .manifest import read_manifest
from .ranks import agreed, broadcast, current_layout

DEFAULT_MODELS = ("policy", "prm")


def saved_layout(run_dir: str | os.PathLike, step: int | str | None = None) -> tuple[Path, dict]:
    """(checkpoint directory, its manifest) for `step` of `run_dir` (None: the latest)."""
    mgr = CheckpointManager(run_dir)
    path = mgr.resolve("auto" if step is None else step)
    if path is None:
        raise CheckpointError(f"{mgr.dir}: no complete checkpoint to export")
    return path, read_manifest(path)


def export_hf(run_dir: str | os.PathLike, step: int | str | None = None, out: str | os.PathLike | None = None,
              *, models: Sequence[str] | None = None, overwrite: bool = False) -> dict[str, Path]:
    """Export `models` (default: whichever of policy and PRM the checkpoint holds) of checkpoint `step`
    (None: latest) to `out/<name>/` (default out: `run_dir/export/step_<N>`). Returns {name: directory}.

    Collective when torch.distributed is running (then its TP/PP must equal the saved ones); without it,
    starts a world of one process (only possible for a tp=pp=1 checkpoint) and tears it down after."""
    from primeflow.models import ModelConfig, build_model, export_hf_checkpoint

    from ..parallel import init_distributed, shutdown

    path, manifest = saved_layout(run_dir, step)
    saved = manifest["layout"]
    names = list(models) if models is not None else [n for n in DEFAULT_MODELS if n in manifest["models"]]
    missing = [n for n in names if n not in manifest["models"]]
    if missing or not names:
        raise CheckpointError(f"{path}: cannot export {missing or names}; the checkpoint holds models "
                              f"{sorted(manifest['models'])}")
    for name in names:
        if manifest["models"][name].get("model_config") is None:
            raise CheckpointError(f"{path}: model {name!r} was saved without a ModelConfig (not built by "
                                  "primeflow.models.build_model); it cannot be rebuilt for export")
    out_dir = Path(out) if out is not None else Path(run_dir) / "export" / f"step_{manifest['step']}"

    owns_world = not dist.is_initialized()
    if owns_world:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if saved["tp"] * saved["pp"] > 1 and world == 1:
            raise CheckpointError(
                f"{path}: saved with tp={saved['tp']} pp={saved['pp']}; exporting needs tp*pp = "
                f"{saved['tp'] * saved['pp']} processes: `torchrun --nproc-per-node {saved['tp'] * saved['pp']} "
                f"-m primeflow.trainer.export --run-dir {run_dir} ...` (`primeflow export` does this itself)")
        init_distributed(tp=saved["tp"], pp=saved["pp"])
    lay = current_layout()
    try:
        if (lay.tp, lay.pp) != (saved["tp"], saved["pp"]):
            raise CheckpointError(f"{path}: saved with tp={saved['tp']} pp={saved['pp']}, the running world has "
                                  f"tp={lay.tp} pp={lay.pp}")
        result = {}
        for name in names:
            meta = manifest["models"][name]
            target = out_dir / name
            if target.exists() and not overwrite:
                raise CheckpointError(f"{target}: already exists (pass overwrite=True / --force to replace it)")
            cfg = ModelConfig(**meta["model_config"])
            model = build_model(cfg, role=meta["role"] or "policy", params_dtype=meta["params_dtype"],
                                transformer_impl=meta.get("transformer_impl", "local"))
            CheckpointManager(run_dir).load(path, models={name: model}, optimizers={}, schedulers={},
                                            rng=False, strict=False)
            side = path / "hf" / name
            model.hf_source_path = side if side.is_dir() else None
            # Written next to the target, then renamed: an interrupted export leaves no half checkpoint.
            tmp_name = broadcast(f".tmp-{name}-{secrets.token_hex(4)}" if lay.is_rank0 else None)
            tmp = out_dir / tmp_name
            export_hf_checkpoint(model, tmp)

            def publish(tmp=tmp, target=target) -> None:
                if lay.is_rank0:
                    if target.exists():
                        shutil.rmtree(target)
                    os.rename(tmp, target)

            agreed(f"exporting {name} to {target}", publish)
            result[name] = target
        return result
    finally:
        if owns_world:
            shutdown()
