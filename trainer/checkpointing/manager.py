"""CheckpointManager: sharded, atomic, verified checkpoints of a (TP x PP x DP) training run.

Layout of `run_dir/checkpoints/step_<N>/`:
    model.<name>.tp<TT>-pp<PP>.pt       model state_dict of one TP/PP shard (written by dp_rank 0 only: DP
    optim.<name>.tp<TT>-pp<PP>.pt       replicas hold the same model, optimizer and scheduler state)
    sched.<name>.tp<TT>-pp<PP>.pt
    rng.<rank id>.pt                    every rank: python / numpy / torch CPU / CUDA (+ named generators)
    trainer_state.<rank id>.json        every rank: the loop's JSON state (dataloader, refill buffer, ...)
    hf/<name>/config.json, tokenizer*   HF side files of each model (so export needs nothing outside)
    manifest.json                       written last by rank 0: step, layout, components, model metadata,
                                        every file with its size and sha256
where <rank id> = rank<R>-tp<TT>-pp<PP>-dp<DDD>.

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

from ..parallel import ParallelLayout
from . import rng as rng_state
from .files import fsync_dir, sha256_file, write_bytes, write_json, write_torch

FORMAT = "primeflow-checkpoint/1"
MANIFEST = "manifest.json"
HF_SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "chat_template.jinja", "vocab.json", "merges.txt")
VERIFY_MODES = ("sha256", "size")
_STEP_DIR = re.compile(r"^step_(\d+)$")
_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or used; the message names the file / step / setting at fault."""


def _hook(event: str, path: Path) -> None:
    """Test seam: called after each durable step of `save` ("prepared", "file", "manifest", "renamed",
    "trashed", "pruned").
    tests/checkpoint replaces it to SIGKILL a saving process at every one of those points."""


# ---- ranks and collectives ------------------------------------------------------------------------------

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


def _multi() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def _all_gather(obj: Any) -> list[Any]:
    if not _multi():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _broadcast(obj: Any) -> Any:
    if not _multi():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _agreed(what: str, fn: Callable[[], Any]) -> Any:
    """Run `fn` on every rank; if it failed anywhere, raise CheckpointError on every rank with all messages
    (a rank failing alone would otherwise leave the others waiting in the next collective)."""
    try:
        result, error = fn(), None
    except Exception as exc:  # noqa: BLE001 - reported to every rank below
        if not _multi():
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(f"{what}: {type(exc).__name__}: {exc}") from exc
        result, error = None, str(exc) if isinstance(exc, CheckpointError) else f"{type(exc).__name__}: {exc}"
    errors = [(r, e) for r, e in enumerate(_all_gather(error)) if e is not None]
    if errors:
        raise CheckpointError(f"{what}: " + "; ".join(f"[rank {r}] {e}" for r, e in errors))
    return result


def _shard_id(lay: ParallelLayout) -> str:
    return f"tp{lay.tp_rank:02d}-pp{lay.pp_rank:02d}"


def _rank_id(lay: ParallelLayout) -> str:
    return f"rank{lay.rank:05d}-{_shard_id(lay)}-dp{lay.dp_rank:03d}"


def _layout_dict(lay: ParallelLayout) -> dict[str, int]:
    return {"world_size": lay.world_size, "tp": lay.tp, "pp": lay.pp, "dp": lay.dp}


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
    }


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the checkpoint directory `path` (CheckpointError naming the file if absent/corrupt)."""
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise CheckpointError(f"{file}: missing (not a complete primeflow checkpoint directory)")
    try:
        manifest = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{file}: corrupted manifest ({exc})") from exc
    required = ("format", "step", "layout", "components", "models", "files")
    if not isinstance(manifest, dict) or any(k not in manifest for k in required):
        raise CheckpointError(f"{file}: corrupted manifest (needs keys {list(required)})")
    if manifest["format"] != FORMAT:
        raise CheckpointError(f"{file}: format {manifest['format']!r} is not {FORMAT!r}")
    return manifest


def _verify_file(ckpt: Path, name: str, manifest: dict[str, Any], mode: str) -> Path:
    entry = manifest["files"].get(name)
    file = ckpt / name
    if entry is None:
        raise CheckpointError(f"{file}: not listed in {ckpt / MANIFEST} (saved with a different layout or "
                              "component set?)")
    if not file.is_file():
        raise CheckpointError(f"{file}: missing checkpoint file")
    size = file.stat().st_size
    if size != entry["size"]:
        raise CheckpointError(f"{file}: size {size} bytes, manifest says {entry['size']} (truncated or altered)")
    if mode == "sha256" and sha256_file(file) != entry["sha256"]:
        raise CheckpointError(f"{file}: sha256 differs from the manifest (corrupted)")
    return file


def _torch_load(file: Path) -> Any:
    return torch.load(file, map_location="cpu", weights_only=True)


class CheckpointManager:
    """Save / find / load the checkpoints of one run directory. Collective: call on every rank."""

    def __init__(self, run_dir: str | os.PathLike, *, keep_last: int | None = 3):
        if keep_last is not None and (not isinstance(keep_last, int) or keep_last < 1):
            raise ValueError(f"keep_last must be a positive integer or None (keep all), got {keep_last!r}")
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / "checkpoints"
        self.keep_last = keep_last

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
        state_bytes = _agreed(f"checkpoint step {step}", encode_state)

        tmp_name = _agreed(f"checkpoint step {step}: preparing {self.dir}",
                           lambda: str(self._prepare(step)) if lay.is_rank0 else None)
        tmp = Path(_broadcast(tmp_name))

        def write_rank_files() -> dict[str, Any]:
            if not tmp.is_dir():
                raise CheckpointError(f"{tmp}: not visible on this rank (run_dir must be on a shared filesystem)")
            files: dict[str, Any] = {}

            def put(name: str, entry: dict[str, Any]) -> None:
                files[name] = {**entry, "rank": lay.rank}
                _hook("file", tmp / name)

            if lay.dp_rank == 0:
                shard = _shard_id(lay)
                for name, model in models.items():
                    put(f"model.{name}.{shard}.pt", write_torch(model.state_dict(), tmp / f"model.{name}.{shard}.pt"))
                for name, opt in optimizers.items():
                    put(f"optim.{name}.{shard}.pt", write_torch(opt.state_dict(), tmp / f"optim.{name}.{shard}.pt"))
                for name, sched in schedulers.items():
                    put(f"sched.{name}.{shard}.pt", write_torch(sched.state_dict(), tmp / f"sched.{name}.{shard}.pt"))
            rid = _rank_id(lay)
            put(f"trainer_state.{rid}.json", write_bytes(state_bytes, tmp / f"trainer_state.{rid}.json"))
            if rng:
                put(f"rng.{rid}.pt", write_torch(rng_state.capture(dict(generators or {})), tmp / f"rng.{rid}.pt"))
            if lay.is_rank0:
                for name, model in models.items():
                    for rel, entry in self._copy_hf_side_files(model, tmp, name).items():
                        put(rel, entry)
            return files

        per_rank = _agreed(f"checkpoint step {step}: writing into {tmp}", write_rank_files)
        per_rank = _all_gather(per_rank)
        meta = {name: _model_meta(m) for name, m in models.items()}

        def finalize() -> str | None:
            if not lay.is_rank0:
                return None
            files: dict[str, Any] = {}
            for rank_files in per_rank:
                files.update(rank_files)
            manifest = {
                "format": FORMAT, "step": step, "created_unix": time.time(), "layout": _layout_dict(lay),
                "components": {"models": sorted(models), "optimizers": sorted(optimizers),
                               "schedulers": sorted(schedulers), "rng": bool(rng),
                               "generators": sorted(generators or {})},
                "models": meta, "files": dict(sorted(files.items())),
            }
            write_json(manifest, tmp / MANIFEST)
            _hook("manifest", tmp / MANIFEST)
            fsync_dir(tmp)
            final = self.step_dir(step)
            trash = None
            if final.exists():
                trash = self.dir / f".trash-step_{step}-{secrets.token_hex(4)}"
                os.rename(final, trash)
            os.rename(tmp, final)
            fsync_dir(self.dir)
            _hook("renamed", final)
            if trash is not None:
                shutil.rmtree(trash, ignore_errors=True)
            return str(final)

        final = Path(_broadcast(_agreed(f"checkpoint step {step}: finalizing {tmp}", finalize)))
        if lay.is_rank0:
            self._prune(keep=step)
        if _multi():
            dist.barrier()
        return final

    def remove_leftovers(self) -> list[str]:
        """Delete `.tmp-*` / `.trash-*` leftovers of interrupted saves and deletions (never a `step_<N>`);
        returns their names. Called on rank 0 when a run starts (a save killed by a full disk must not keep
        the space) and before every save. Nothing else may be writing checkpoints of this run meanwhile."""
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
        _hook("prepared", tmp)
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
        _hook("trashed", trash)
        shutil.rmtree(trash, ignore_errors=True)

    def _prune(self, *, keep: int) -> None:
        if self.keep_last is None:
            return
        steps = [s for s in self.steps() if s != keep]
        excess = len(steps) + 1 - self.keep_last
        for s in steps[:max(excess, 0)]:
            self._remove(s)
            _hook("pruned", self.step_dir(s))

    def discard_after(self, step: int) -> list[int]:
        """Delete checkpoints newer than `step` (collective). Call when resuming from an older checkpoint
        than the latest, so a later `--resume auto` cannot pick a step of the abandoned continuation."""
        removed = [s for s in self.steps() if s > step]
        if current_layout().is_rank0:
            for s in removed:
                self._remove(s)
        if _multi():
            dist.barrier()
        return removed

    # ---- loading ----------------------------------------------------------------------------------------

    def load(self, step_or_path: int | str | os.PathLike, *, models: Mapping[str, torch.nn.Module],
             optimizers: Mapping[str, torch.optim.Optimizer],
             schedulers: Mapping[str, torch.optim.lr_scheduler.LRScheduler], rng: bool = True,
             generators: Mapping[str, torch.Generator] | None = None, strict: bool = True,
             verify: str = "sha256") -> dict[str, Any]:
        """Restore this rank's shards (collective); returns this rank's trainer_state.

        Verifies the manifest, that the saved layout equals the current one (tp, pp and, when strict, dp),
        and each file this rank reads (presence, size, sha256 with verify="sha256"). strict=True: the
        names of models/optimizers/schedulers/generators must be exactly the saved ones; strict=False:
        any subset (used by export, which restores models only)."""
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify={verify!r} is not allowed; allowed: {list(VERIFY_MODES)}")
        for kind, named in (("models", models), ("optimizers", optimizers), ("schedulers", schedulers),
                            ("generators", generators or {})):
            _check_names(kind, named)
        path = self.step_dir(step_or_path) if isinstance(step_or_path, int) else Path(step_or_path)
        lay = current_layout()

        def check() -> dict[str, Any]:
            manifest = read_manifest(path)
            saved = manifest["layout"]
            now = _layout_dict(lay)
            keys = ("tp", "pp", "dp") if strict else ("tp", "pp")
            if any(saved.get(k) != now[k] for k in keys):
                raise CheckpointError(
                    f"{path}: saved with layout tp={saved.get('tp')} pp={saved.get('pp')} dp={saved.get('dp')} "
                    f"(world {saved.get('world_size')}), this run has tp={lay.tp} pp={lay.pp} dp={lay.dp} "
                    f"(world {lay.world_size}); resharding a checkpoint is not supported: resume with the saved "
                    "layout, or export it (`primeflow export`) and start a new run from the HF checkpoint")
            comp = manifest["components"]
            asked = {"models": models, "optimizers": optimizers, "schedulers": schedulers,
                     "generators": generators or {}}
            for kind, named in asked.items():
                have, want = set(comp.get(kind, [])), set(named)
                if (strict and have != want) or not want <= have:
                    raise CheckpointError(f"{path}: saved {kind} {sorted(have)}, asked to load {sorted(want)}")
            if rng and not comp.get("rng"):
                raise CheckpointError(f"{path}: saved without RNG states (rng=False at save); load with rng=False")
            rid, shard = _rank_id(lay), _shard_id(lay)
            if rng and lay.dp != saved["dp"]:
                raise CheckpointError(f"{path}: RNG states were saved per rank at dp={saved['dp']}; this run "
                                      f"has dp={lay.dp}: load with rng=False")
            wanted = [f"model.{n}.{shard}.pt" for n in models] + [f"optim.{n}.{shard}.pt" for n in optimizers]
            wanted += [f"sched.{n}.{shard}.pt" for n in schedulers]
            if strict:
                wanted.append(f"trainer_state.{rid}.json")
            if rng:
                wanted.append(f"rng.{rid}.pt")
            if lay.is_rank0:  # presence and size of every file, so a damaged checkpoint is named whole
                for name in manifest["files"]:
                    _verify_file(path, name, manifest, "size")
            for name in wanted:
                _verify_file(path, name, manifest, verify)
            return manifest

        manifest = _agreed(f"loading checkpoint {path}", check)

        def restore() -> dict[str, Any]:
            shard, rid = _shard_id(lay), _rank_id(lay)
            for name, model in models.items():
                file = path / f"model.{name}.{shard}.pt"
                try:
                    model.load_state_dict(_torch_load(file), strict=True)
                except RuntimeError as exc:
                    raise CheckpointError(f"{file}: does not fit model {name!r}: {exc}") from exc
            for name, opt in optimizers.items():
                file = path / f"optim.{name}.{shard}.pt"
                try:
                    opt.load_state_dict(_torch_load(file))
                except (ValueError, KeyError, RuntimeError) as exc:
                    raise CheckpointError(f"{file}: does not fit optimizer {name!r}: {exc}") from exc
            for name, sched in schedulers.items():
                sched.load_state_dict(_torch_load(path / f"sched.{name}.{shard}.pt"))
            if rng:
                file = path / f"rng.{rid}.pt"
                rng_state.restore(_torch_load(file), dict(generators or {}), source=str(file))
            state_file = path / f"trainer_state.{rid}.json"
            if not state_file.is_file():  # strict=False and a layout with other ranks: rank 0's state
                rank0 = [n for n, e in manifest["files"].items() if n.startswith("trainer_state.") and e["rank"] == 0]
                state_file = path / rank0[0]
            return json.loads(state_file.read_text())

        return _agreed(f"loading checkpoint {path}", restore)
