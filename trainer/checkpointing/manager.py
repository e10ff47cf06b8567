"""CheckpointManager: sharded, atomic, verified checkpoints of a (TP x PP x DP) training run.

Layout of `run_dir/checkpoints/step_<N>/`:
    dist/<name>/                        a Megatron model and its megatron-core optimizer through megatron-core's
                                        dist_checkpointing (sharded.py): every rank writes its part, and a
                                        later run at another TP / PP / DP layout reads the slices it needs
    model.<name>.tp<TT>-pp<PP>.pt       a plain torch module / torch optimizer (no sharded_state_dict), one
    optim.<name>.tp<TT>-pp<PP>.pt       file per TP/PP shard written by dp_rank 0: loadable at the same TP/PP
    sched.<name>.pt                     LR schedule (the same on every rank; written by rank 0)
    rng.<rank id>.pt                    every rank: python / numpy / torch CPU / CUDA (+ named generators)
    trainer_state.<rank id>.json        every rank: the loop's JSON state (dataloader, refill buffer, ...)
    hf/<name>/config.json, tokenizer*   HF side files of each model (so export needs nothing outside)
    manifest.json                       written last by rank 0: step, layout, components, model metadata,
                                        every file with its size and sha256 (dist/ files hashed by their writer)
where <rank id> = rank<R>-tp<TT>-pp<PP>-dp<DDD>.

Resuming at another layout: the dist/ parts reshard (a distributed optimizer saved as `dp_reshardable`
only over DP: parallel.optimizer_checkpoint); per-rank RNG streams cannot be mapped to other ranks, so such
a load passes rng=False, and every rank reads rank 0's trainer_state. On an unchanged layout every tensor,
stream and state is restored bitwise (tests/checkpoint).

Atomicity: all ranks write into `checkpoints/.tmp-step_<N>-<nonce>/` (each file fsynced), rank 0 writes the
manifest, fsyncs the directory, renames it to `step_<N>` and fsyncs `checkpoints/`. A process killed at any
moment leaves either no `step_<N>` or a complete one; `.tmp-*` / `.trash-*` leftovers are ignored by
`latest()` and deleted when a run starts and at the next save. Pruning and replacement move a directory to
`.trash-*` before deleting it, so a half-deleted checkpoint never carries a valid name.

Every rank must see `run_dir` (a shared filesystem for multi-node runs). Errors on any rank are gathered
and raised on every rank (with each rank's message), so a failed save/load ends the job instead of
leaving the other ranks waiting in a collective.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from . import rng as rng_state
from . import sharded
from .errors import CheckpointDiskFull, CheckpointError
from .files import fsync_dir, sha256_file, write_bytes, write_json, write_torch
from .layout import Parts, check_layout, layout_change, layout_dict, rank_id, shard_id, split_parts
from .manifest import FORMAT, MANIFEST, read_manifest, verify_file
from .ranks import agreed, all_gather, broadcast, current_layout, is_multi

__all__ = ["CheckpointDiskFull", "CheckpointError", "CheckpointManager", "current_layout", "layout_change",
           "read_manifest"]

HF_SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "chat_template.jinja", "vocab.json", "merges.txt")
VERIFY_MODES = ("sha256", "size")
_STEP_DIR = re.compile(r"^step_(\d+)$")
_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_log = logging.getLogger(__name__)


SaveEvent = Callable[[str, Path], None]


def _no_event(event: str, path: Path) -> None:
    """The default `on_event` of CheckpointManager: nothing happens at a save's durable points."""


def _check_names(kind: str, named: Mapping[str, Any]) -> None:
    if not isinstance(named, Mapping):
        raise TypeError(f"{kind} must be a dict name -> object, got {type(named).__name__}")
    for name in named:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"{kind} key {name!r} is not allowed: use letters, digits and '_' (it names files)")


def _model_meta(model: torch.nn.Module) -> dict[str, Any]:
    """What `export_hf` needs to rebuild the model: set by primeflow.models.build_model / load_hf_checkpoint."""
    cfg = getattr(model, "model_config", None)
    src = getattr(model, "hf_source_path", None)
    first = next(iter(model.parameters()), None)
    return {
        "role": getattr(model, "role", None),
        "model_config": dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else None,
        "hf_source_path": str(src) if src is not None else None,
        "params_dtype": str(first.dtype).removeprefix("torch.") if first is not None else None,
        # local | transformer_engine: the implementations name the norm weights differently
        "transformer_impl": getattr(model, "transformer_impl", "local"),
    }


def _check_transformer_impl(path: Path, manifest: dict[str, Any], models: Mapping[str, torch.nn.Module]) -> None:
    """A model saved with one layer implementation loads only into the same one (parameter names differ)."""
    for name, model in models.items():
        saved = (manifest["models"].get(name) or {}).get("transformer_impl", "local")
        running = getattr(model, "transformer_impl", "local")
        if saved != running:
            raise CheckpointError(f"{path}: model {name!r} was saved with transformer_impl={saved!r}, this run "
                                  f"builds it with {running!r}; set model.transformer_impl={saved} to resume it")


def _load_sharded(source: Path, name: str, model: torch.nn.Module, optimizer: Any | None,
                  sharding: str | None) -> None:
    what = f"model {name!r}" + (" and its optimizer" if optimizer is not None else "")
    try:
        sharded.load(source, model, optimizer, sharding=sharding)
    except Exception as exc:  # noqa: BLE001 - megatron-core raises several types; all mean "does not fit"
        raise CheckpointError(f"{source}: does not fit {what}: {type(exc).__name__}: {exc}") from exc


def _torch_load(file: Path) -> Any:
    return torch.load(file, map_location="cpu", weights_only=True)


class CheckpointManager:
    """Save / find / load the checkpoints of one run directory. Collective: call on every rank."""

    def __init__(self, run_dir: str | os.PathLike, *, keep_last: int | None = 3, on_event: SaveEvent = _no_event):
        """on_event(event, path) is called after each durable point of `save` ("prepared", "file", "manifest",
        "renamed", "trashed", "pruned"); tests/checkpoint SIGKILLs a saving process at every one of them."""
        if keep_last is not None and (not isinstance(keep_last, int) or keep_last < 1):
            raise ValueError(f"keep_last must be a positive integer or None (keep all), got {keep_last!r}")
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / "checkpoints"
        self.keep_last = keep_last
        self._on_event = on_event

    # ---- finding ----------------------------------------------------------------------------------------

    def step_dir(self, step: int) -> Path:
        return self.dir / f"step_{step}"

    def _problem(self, path: Path, step: int) -> str | None:
        """Why checkpoint `path` cannot be used (None: manifest readable, names this step, and every listed
        file present with its size; no hashing)."""
        try:
            manifest = read_manifest(path)
        except CheckpointError as exc:
            return str(exc)
        if manifest["step"] != step:
            return f"its manifest says step {manifest['step']}"
        for name, entry in manifest["files"].items():
            f = path / name
            if not f.is_file() or f.stat().st_size != entry["size"]:
                return f"file {name} missing or of the wrong size"
        return None

    def _named_step_dirs(self) -> list[tuple[int, Path]]:
        if not self.dir.is_dir():
            return []
        found = [(int(m.group(1)), entry) for entry in self.dir.iterdir()
                 if (m := _STEP_DIR.match(entry.name)) and entry.is_dir()]
        return sorted(found)

    def steps(self) -> list[int]:
        """Steps with a complete checkpoint, ascending (partial, temporary and foreign entries ignored)."""
        found = []
        for step, entry in self._named_step_dirs():
            problem = self._problem(entry, step)
            if problem is None:
                found.append(step)
            else:
                _log.warning("ignoring %s: %s", entry, problem)
        return found

    def unusable(self) -> list[tuple[Path, str]]:
        """Every `step_<N>` directory that cannot be resumed from, with the reason."""
        out = []
        for step, entry in self._named_step_dirs():
            problem = self._problem(entry, step)
            if problem is not None:
                out.append((entry, problem))
        return out

    def latest(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def resolve(self, resume: str | int | os.PathLike | None) -> Path | None:
        """`--resume` value -> checkpoint directory or None (start fresh).

        "none"/None: None. "auto": the latest complete checkpoint of this run, or None if there is none.
        An int (or a string of digits): that step of this run (error listing the available steps if absent).
        A path: a checkpoint directory (holding manifest.json), or another run directory (its latest)."""
        if resume is None or resume == "none":
            return None
        if resume == "auto":
            step = self.latest()
            if step is None and (bad := self.unusable()):
                # starting over would overwrite the run's metrics and checkpoints: never do it silently
                listed = "; ".join(f"{path.name}: {why}" for path, why in bad)
                raise CheckpointError(
                    f"resume='auto': {self.dir} holds checkpoints but none is usable ({listed}). Refusing to "
                    f"start over on top of them: repair or move them away, or pass --resume none to start fresh")
            return None if step is None else self.step_dir(step)
        if isinstance(resume, bool):
            raise ValueError(f"resume={resume!r}: expected 'auto', 'none', a step number or a path")
        if isinstance(resume, int) or (isinstance(resume, str) and resume.isdigit()):
            step = int(resume)
            if step not in self.steps():
                raise CheckpointError(f"resume={resume!r}: no complete checkpoint {self.step_dir(step)}; "
                                      f"available steps: {self.steps()}")
            return self.step_dir(step)
        path = Path(resume)
        if (path / MANIFEST).is_file():
            read_manifest(path)
            return path
        if (path / "checkpoints").is_dir():
            other = CheckpointManager(path)
            step = other.latest()
            if step is None:
                raise CheckpointError(f"resume={str(resume)!r}: run directory has no complete checkpoint")
            return other.step_dir(step)
        raise CheckpointError(f"resume={str(resume)!r}: expected 'auto', 'none', a step number, a checkpoint "
                              f"directory (with {MANIFEST}) or a run directory (with checkpoints/)")

    # ---- saving -----------------------------------------------------------------------------------------

    def save(self, step: int, *, models: Mapping[str, torch.nn.Module],
             optimizers: Mapping[str, torch.optim.Optimizer],
             schedulers: Mapping[str, torch.optim.lr_scheduler.LRScheduler],
             trainer_state: dict[str, Any], rng: bool = True,
             generators: Mapping[str, torch.Generator] | None = None) -> Path:
        """Write checkpoint `step` (collective; see `_save`); returns `checkpoints/step_<step>`.

        A save that fails deletes its partial `.tmp-step_<step>-*` (on a full disk it holds the space the next
        start needs, and nothing can resume from it); a full disk raises CheckpointDiskFull naming checkpoints/."""
        try:
            return self._save(step, models=models, optimizers=optimizers, schedulers=schedulers,
                              trainer_state=trainer_state, rng=rng, generators=generators)
        except CheckpointError as error:
            if current_layout().is_rank0:  # every rank got the error: nobody writes into the directory any more
                self.remove_leftovers()
            if isinstance(error, CheckpointDiskFull):
                raise CheckpointDiskFull(
                    f"checkpoint step {step}: disk full: no space left in {self.dir} (the partial checkpoint was "
                    "removed): free space there, or put run.dir on a disk with room for a checkpoint") from error
            raise

    def _save(self, step: int, *, models: Mapping[str, torch.nn.Module],
              optimizers: Mapping[str, torch.optim.Optimizer],
              schedulers: Mapping[str, torch.optim.lr_scheduler.LRScheduler],
              trainer_state: dict[str, Any], rng: bool = True,
              generators: Mapping[str, torch.Generator] | None = None) -> Path:
        """Write checkpoint `step` (collective); returns `checkpoints/step_<step>`.

        models / optimizers / schedulers: this rank's shard objects by name (e.g. "policy", "prm").
        trainer_state: JSON-serializable dict of this rank's loop state (it comes back through JSON: tuples
        as lists, non-string dict keys as strings; floats exactly).
        rng: save this rank's RNG streams; generators: extra named torch.Generators to save with them.
        An existing step_<step> (a resume from an older checkpoint) is replaced."""
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        for kind, named in (("models", models), ("optimizers", optimizers), ("schedulers", schedulers),
                            ("generators", generators or {})):
            _check_names(kind, named)
        lay = current_layout()

        def encode_state() -> bytes:
            if not isinstance(trainer_state, dict):
                raise TypeError(f"trainer_state must be a dict, got {type(trainer_state).__name__}")
            try:
                return (json.dumps(trainer_state, indent=1, allow_nan=True) + "\n").encode()
            except (TypeError, ValueError) as exc:
                raise TypeError(f"trainer_state must be JSON-serializable: {exc}") from exc

        # Collective even though it is local: a rank whose state fails must not leave the others waiting.
        state_bytes = agreed(f"checkpoint step {step}", encode_state)

        tmp_name = agreed(f"checkpoint step {step}: preparing {self.dir}",
                           lambda: str(self._prepare(step)) if lay.is_rank0 else None)
        tmp = Path(broadcast(tmp_name))

        split = agreed(f"checkpoint step {step}", lambda: split_parts(models, optimizers))

        def write_rank_files() -> dict[str, Any]:
            if not tmp.is_dir():
                raise CheckpointError(f"{tmp}: not visible on this rank (run_dir must be on a shared filesystem)")
            files: dict[str, Any] = {}

            def put(name: str, entry: dict[str, Any]) -> None:
                files[name] = {**entry, "rank": lay.rank}
                self._on_event("file", tmp / name)

            if lay.dp_rank == 0:
                shard = shard_id(lay)
                for kind, names, objects in (("model", split.plain_models, models),
                                             ("optim", split.plain_optimizers, optimizers)):
                    for name in names:
                        file = f"{kind}.{name}.{shard}.pt"
                        put(file, write_torch(objects[name].state_dict(), tmp / file))
            rid = rank_id(lay)
            put(f"trainer_state.{rid}.json", write_bytes(state_bytes, tmp / f"trainer_state.{rid}.json"))
            if rng:
                put(f"rng.{rid}.pt", write_torch(rng_state.capture(dict(generators or {})), tmp / f"rng.{rid}.pt"))
            if lay.is_rank0:
                for name, sched in schedulers.items():
                    put(f"sched.{name}.pt", write_torch(sched.state_dict(), tmp / f"sched.{name}.pt"))
                for name, model in models.items():
                    for rel, entry in self._copy_hf_side_files(model, tmp, name).items():
                        put(rel, entry)
            return files

        per_rank = agreed(f"checkpoint step {step}: writing into {tmp}", write_rank_files)
        for name in split.sharded_models:  # collective: every rank writes its part of each model
            target = tmp / sharded.DIST_DIR / name
            agreed(f"checkpoint step {step}: writing {target}",
                    lambda target=target, name=name: sharded.save(
                        target, models[name], optimizers[name] if name in split.sharded_optimizers else None))

        def hash_dist_files() -> dict[str, Any]:
            # megatron-core writes these files itself, so each rank hashes (reads back) the ones it wrote
            files = {}
            for name in split.sharded_models:
                for f in sharded.files_written_by(tmp / sharded.DIST_DIR / name, lay.rank):
                    rel = sharded.relative(f, tmp)
                    files[rel] = {"size": f.stat().st_size, "sha256": sha256_file(f), "rank": lay.rank}
                    self._on_event("file", f)
            return files

        per_rank.update(agreed(f"checkpoint step {step}: hashing {tmp / sharded.DIST_DIR}", hash_dist_files))
        per_rank = all_gather(per_rank)
        meta = {name: _model_meta(m) for name, m in models.items()}

        def finalize() -> str | None:
            if not lay.is_rank0:
                return None
            files: dict[str, Any] = {}
            for rank_files in per_rank:
                files.update(rank_files)
            manifest = {
                "format": FORMAT, "step": step, "created_unix": time.time(), "layout": layout_dict(lay),
                "components": {"models": sorted(models), "optimizers": sorted(optimizers),
                               "schedulers": sorted(schedulers), "rng": bool(rng),
                               "generators": sorted(generators or {}),
                               "sharded_models": sorted(split.sharded_models),
                               "sharded_optimizers": split.sharded_optimizers},
                "models": meta, "files": dict(sorted(files.items())),
            }
            write_json(manifest, tmp / MANIFEST)
            self._on_event("manifest", tmp / MANIFEST)
            fsync_dir(tmp)
            final = self.step_dir(step)
            trash = None
            if final.exists():
                trash = self.dir / f".trash-step_{step}-{secrets.token_hex(4)}"
                os.rename(final, trash)
            os.rename(tmp, final)
            fsync_dir(self.dir)
            self._on_event("renamed", final)
            if trash is not None:
                shutil.rmtree(trash, ignore_errors=True)
            return str(final)

        final = Path(broadcast(agreed(f"checkpoint step {step}: finalizing {tmp}", finalize)))
        if lay.is_rank0:
            self._prune(keep=step)
        if is_multi():
            dist.barrier()
        return final

    def remove_leftovers(self) -> list[str]:
        """Delete `.tmp-*` / `.trash-*` leftovers of interrupted saves and deletions (never a `step_<N>`);
        returns their names. Called on rank 0 when a run starts (a save killed by a full disk must not keep
        the space), before every save and after a failed one. Nothing else may be writing checkpoints of this
        run meanwhile."""
        if not self.dir.is_dir():
            return []
        removed = []
        for entry in self.dir.iterdir():
            if entry.name.startswith((".tmp-", ".trash-")):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
        return removed

    def _prepare(self, step: int) -> Path:
        """Rank 0: delete leftovers of interrupted saves / deletions, create the temporary directory."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.remove_leftovers()
        tmp = self.dir / f".tmp-step_{step}-{secrets.token_hex(6)}"
        tmp.mkdir()
        fsync_dir(self.dir)
        self._on_event("prepared", tmp)
        return tmp

    def _copy_hf_side_files(self, model: torch.nn.Module, tmp: Path, name: str) -> dict[str, Any]:
        src = getattr(model, "hf_source_path", None)
        if src is None or not Path(src).is_dir():
            return {}
        out: dict[str, Any] = {}
        (tmp / "hf" / name).mkdir(parents=True, exist_ok=True)
        for fname in HF_SIDE_FILES:
            if (Path(src) / fname).is_file():
                rel = f"hf/{name}/{fname}"
                out[rel] = write_bytes((Path(src) / fname).read_bytes(), tmp / rel)
        fsync_dir(tmp / "hf" / name)
        fsync_dir(tmp / "hf")
        return out

    def _remove(self, step: int) -> None:
        trash = self.dir / f".trash-step_{step}-{secrets.token_hex(4)}"
        os.rename(self.step_dir(step), trash)
        fsync_dir(self.dir)
        self._on_event("trashed", trash)
        shutil.rmtree(trash, ignore_errors=True)

    def _prune(self, *, keep: int) -> None:
        if self.keep_last is None:
            return
        steps = [s for s in self.steps() if s != keep]
        excess = len(steps) + 1 - self.keep_last
        for s in steps[:max(excess, 0)]:
            self._remove(s)
            self._on_event("pruned", self.step_dir(s))

    def discard_after(self, step: int) -> list[int]:
        """Delete checkpoints newer than `step` (collective). Call when resuming from an older checkpoint
        than the latest, so a later `--resume auto` cannot pick a step of the abandoned continuation."""
        removed = [s for s in self.steps() if s > step]
        if current_layout().is_rank0:
            for s in removed:
                self._remove(s)
        if is_multi():
            dist.barrier()
        return removed

    # ---- loading ----------------------------------------------------------------------------------------

    def load(self, step_or_path: int | str | os.PathLike, *, models: Mapping[str, torch.nn.Module],
             optimizers: Mapping[str, torch.optim.Optimizer],
             schedulers: Mapping[str, torch.optim.lr_scheduler.LRScheduler], rng: bool = True,
             generators: Mapping[str, torch.Generator] | None = None, strict: bool = True,
             verify: str = "sha256") -> dict[str, Any]:
        """Restore this rank's part of every model, optimizer and schedule (collective); returns this rank's
        trainer_state (rank 0's when the layout changed).

        Verifies the manifest, that the parts can follow a change of layout (_check_layout), and the files:
        rank 0 the presence and size of all, each rank the files it reads (sha256 with verify="sha256"; the
        dist/ files split over the ranks). strict=True: the names of models/optimizers/schedulers/generators
        must be exactly the saved ones; strict=False: any subset (used by export, which restores models
        only)."""
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify={verify!r} is not allowed; allowed: {list(VERIFY_MODES)}")
        for kind, named in (("models", models), ("optimizers", optimizers), ("schedulers", schedulers),
                            ("generators", generators or {})):
            _check_names(kind, named)
        path = self.step_dir(step_or_path) if isinstance(step_or_path, int) else Path(step_or_path)
        lay = current_layout()

        def check() -> tuple[dict[str, Any], Parts]:
            manifest = read_manifest(path)
            parts = split_parts(models, optimizers)
            saved, now = manifest["layout"], layout_dict(lay)
            comp = manifest["components"]
            asked = {"models": models, "optimizers": optimizers, "schedulers": schedulers,
                     "generators": generators or {}}
            for kind, named in asked.items():
                have, want = set(comp.get(kind, [])), set(named)
                if (strict and have != want) or not want <= have:
                    raise CheckpointError(f"{path}: saved {kind} {sorted(have)}, asked to load {sorted(want)}")
            if rng and not comp.get("rng"):
                raise CheckpointError(f"{path}: saved without RNG states (rng=False at save); load with rng=False")
            check_layout(path, manifest, parts, lay, rng=rng)
            _check_transformer_impl(path, manifest, models)
            rid, shard = rank_id(lay), shard_id(lay)
            wanted = [f"model.{n}.{shard}.pt" for n in parts.plain_models]
            wanted += [f"optim.{n}.{shard}.pt" for n in parts.plain_optimizers]
            wanted += [f"sched.{n}.pt" for n in schedulers]
            if strict and saved == now:
                wanted.append(f"trainer_state.{rid}.json")
            if rng:
                wanted.append(f"rng.{rid}.pt")
            if lay.is_rank0:  # presence and size of every file, so a damaged checkpoint is named whole
                for name in manifest["files"]:
                    verify_file(path, name, manifest, "size")
            for name in wanted:
                verify_file(path, name, manifest, verify)
            if verify == "sha256":  # the dist/ files are read by whichever ranks need them: split the hashing
                prefixes = tuple(f"{sharded.DIST_DIR}/{n}/" for n in parts.sharded_models)
                dist_files = sorted(n for n in manifest["files"] if n.startswith(prefixes))
                for name in dist_files[lay.rank::lay.world_size]:
                    verify_file(path, name, manifest, "sha256")
            return manifest, parts

        manifest, parts = agreed(f"loading checkpoint {path}", check)
        saved_optimizers = manifest["components"].get("sharded_optimizers", {})
        for name in parts.sharded_models:  # collective: every rank reads the slices of its layout
            opt = optimizers.get(name) if name in parts.sharded_optimizers else None
            sharding = saved_optimizers.get(name, {}).get("sharding") if opt is not None else None
            source = path / sharded.DIST_DIR / name
            agreed(f"loading {source}", lambda source=source, name=name, opt=opt, sharding=sharding:
                    _load_sharded(source, name, models[name], opt, sharding))

        def restore() -> dict[str, Any]:
            shard, rid = shard_id(lay), rank_id(lay)
            for name in parts.plain_models:
                file = path / f"model.{name}.{shard}.pt"
                try:
                    models[name].load_state_dict(_torch_load(file), strict=True)
                except RuntimeError as exc:
                    raise CheckpointError(f"{file}: does not fit model {name!r}: {exc}") from exc
            for name in parts.plain_optimizers:
                file = path / f"optim.{name}.{shard}.pt"
                try:
                    optimizers[name].load_state_dict(_torch_load(file))
                except (ValueError, KeyError, RuntimeError) as exc:
                    raise CheckpointError(f"{file}: does not fit optimizer {name!r}: {exc}") from exc
            for name, sched in schedulers.items():
                sched.load_state_dict(_torch_load(path / f"sched.{name}.pt"))
            if rng:
                file = path / f"rng.{rid}.pt"
                rng_state.restore(_torch_load(file), dict(generators or {}), source=str(file))
            state_file = path / f"trainer_state.{rid}.json"
            if not state_file.is_file() or manifest["layout"] != layout_dict(lay):
                # another layout (or strict=False): rank 0's state, which the loop keeps the same on every rank
                rank0 = [n for n, e in manifest["files"].items() if n.startswith("trainer_state.") and e["rank"] == 0]
                state_file = path / rank0[0]
            return json.loads(state_file.read_text())

        return agreed(f"loading checkpoint {path}", restore)
