"""MetricsLogger: one JSON object per step in `run_dir/metrics.jsonl`, TensorBoard scalars, optional W&B.

metrics.jsonl is the record a resumed run must reproduce, so each line is flushed and fsynced as it is
written, and `truncate_after(step)` (on resume) atomically rewrites the file without the steps after the
checkpoint. TensorBoard gets `purge_step` on resume, so its view drops the abandoned steps too. W&B is
imported only when enabled and is never required (not a dependency of primeflow: `pip install wandb`).
Only rank 0 writes (rank0_only=True); other ranks' loggers do nothing.

Non-finite values (NaN, inf) are written to metrics.jsonl as null (strict JSON) and skipped in TensorBoard.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tensorboard"


def _rank() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def _as_float(key: str, value: Any) -> float:
    if hasattr(value, "item") and callable(value.item):  # 0-d / 1-element torch or numpy values
        try:
            value = value.item()
        except (ValueError, RuntimeError) as exc:
            raise TypeError(f"metric {key!r}: expected a scalar, got a value of shape "
                            f"{list(getattr(value, 'shape', []))}") from exc
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"metric {key!r}: expected a real number, got {type(value).__name__} {value!r}")
    return float(value)


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl (ValueError naming file:line for a corrupt line; a torn last line,
    left by a process killed mid-write, is ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text().split("\n")
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            if i == len(lines):  # no trailing newline: an interrupted append
                break
            raise ValueError(f"{path}:{i}: not a JSON object ({exc})") from exc
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
            raise ValueError(f"{path}:{i}: expected a JSON object with an integer 'step'")
        records.append(rec)
    return records


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class MetricsLogger:
    """Per-step metrics sink for one run directory (see module docstring)."""

    def __init__(self, run_dir: str | os.PathLike, *, tensorboard: bool = True,
                 wandb: Mapping[str, Any] | None = None, rank0_only: bool = True):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.enabled = not rank0_only or _rank() == 0
        self._tensorboard = tensorboard
        self._tb = None
        self._purge_step: int | None = None
        self._wandb = None
        self._last_step: int | None = None
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        records = read_metrics(self.path)
        text = self.path.read_text() if self.path.is_file() else ""
        if text and not text.endswith("\n"):
            self._rewrite(records)  # drop a torn last line before appending after it
        self._last_step = records[-1]["step"] if records else None
        if wandb is not None:
            self._wandb = self._start_wandb(dict(wandb))

    def _start_wandb(self, options: dict[str, Any]):
        try:
            import wandb as wandb_module
        except ImportError as exc:
            raise ImportError("W&B logging is enabled (wandb options given) but the `wandb` package is not "
                              "installed: `pip install wandb`, or disable W&B logging") from exc
        options.setdefault("mode", "offline")  # offline by default: no network needed; `wandb sync` later
        options.setdefault("dir", str(self.run_dir))
        return wandb_module.init(**options)

    def _writer(self):
        if self._tb is None and self._tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir / TB_DIR), purge_step=self._purge_step)
        return self._tb

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record `metrics` for `step` (steps strictly increase; the key "step" is reserved)."""
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        if not isinstance(metrics, Mapping):
            raise TypeError(f"metrics must be a dict name -> number, got {type(metrics).__name__}")
        values = {}
        for key, value in metrics.items():
            if not isinstance(key, str) or not key or key == "step":
                raise ValueError(f"metric name {key!r} is not allowed (non-empty string, not 'step')")
            values[key] = _as_float(key, value)
        if not self.enabled:
            return
        if self._last_step is not None and step <= self._last_step:
            raise ValueError(f"step {step} logged after step {self._last_step} ({self.path}); steps must "
                             "increase (on resume call truncate_after(resumed_step) first)")
        record = {"step": step, **{k: (v if math.isfinite(v) else None) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._last_step = step
        writer = self._writer()
        if writer is not None:
            for key, value in values.items():
                if math.isfinite(value):
                    writer.add_scalar(key, value, global_step=step)
            writer.flush()
        if self._wandb is not None:
            self._wandb.log(values, step=step)

    def truncate_after(self, step: int) -> int:
        """On resume from checkpoint `step`: drop records with a larger step (atomic rewrite), and make
        TensorBoard discard its events from step+1 on. Returns the number of records dropped."""
        if not self.enabled:
            return 0
        records = read_metrics(self.path)
        kept = [r for r in records if r["step"] <= step]
        self._rewrite(kept)
        self._last_step = kept[-1]["step"] if kept else None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        self._purge_step = step + 1
        return len(records) - len(kept)

    def _rewrite(self, records: list[dict[str, Any]]) -> None:
        _atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in records))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
