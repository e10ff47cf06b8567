"""Which HF checkpoint directory a ``--model`` argument means.

An HF directory is one with ``config.json`` and weights (``*.safetensors`` or ``pytorch_model*.bin``). Accepted:

1. an HF directory itself;
2. a directory holding one as ``policy_hf/`` or ``policy/`` (e.g. ``RUN/export/step_N``, written by
   ``primeflow export``, or ``RUN/checkpoints/step_N/policy_hf``);
3. a run directory: the HF policy of its highest step under ``export/step_N/`` or ``checkpoints/step_N/``.

A run checkpoint ``checkpoints/step_N`` holds Megatron shards, not HF weights: without an export it is an
error that says to run ``primeflow export --run-dir RUN --step N`` first.

``label=PATH`` names the table row; otherwise the label is the run directory's name (for run outputs) or the
HF directory's name, and the Step column comes from a ``step_N`` component of the path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_STEP = re.compile(r"^step_(\d+)$")
_POLICY_SUBDIRS = ("policy_hf", "policy")
_RUN_SUBDIRS = ("export", "checkpoints")


@dataclass(frozen=True)
class ModelSpec:
    label: str
    path: Path  # the HF directory
    step: int | None


def is_hf_dir(p: Path) -> bool:
    if not (p / "config.json").is_file():
        return False
    return any(p.glob("*.safetensors")) or any(p.glob("pytorch_model*.bin"))


def _policy_in(p: Path) -> Path | None:
    for sub in _POLICY_SUBDIRS:
        if is_hf_dir(p / sub):
            return p / sub
    return None


def _step_of(path: Path) -> int | None:
    for part in reversed(path.parts):
        m = _STEP.match(part)
        if m:
            return int(m.group(1))
    return None


def resolve_hf_dir(path: str | Path) -> Path:
    """The HF checkpoint directory for ``path`` (see the module docstring); raises saying what was tried."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"--model {p}: no such directory")
    if is_hf_dir(p):
        return p
    found = _policy_in(p)
    if found is not None:
        return found
    steps = []
    for sub in _RUN_SUBDIRS:
        if (p / sub).is_dir():
            for d in (p / sub).iterdir():
                m = _STEP.match(d.name)
                hf = _policy_in(d) if m else None
                if hf is not None:
                    steps.append((int(m.group(1)), _RUN_SUBDIRS.index(sub), hf))  # export/ wins a tie
    if steps:
        return min(steps, key=lambda t: (-t[0], t[1]))[2]
    if _STEP.match(p.name) and p.parent.name == "checkpoints":
        raise FileNotFoundError(
            f"--model {p}: a training checkpoint (Megatron shards) without HF weights; export it first: "
            f"primeflow export --run-dir {p.parent.parent} --step {_STEP.match(p.name).group(1)}, then pass "
            f"{p.parent.parent / 'export' / p.name}"
        )
    raise FileNotFoundError(
        f"--model {p}: not a model: expected an HF directory ({p}/config.json + *.safetensors), an export "
        f"({p}/policy/ or {p}/policy_hf/) or a run directory ({p}/export/step_N/policy/ or "
        f"{p}/checkpoints/step_N/policy_hf/)"
    )


def parse_model_arg(arg: str) -> ModelSpec:
    """``[label=]PATH`` -> ModelSpec (the path resolved to an HF directory)."""
    label, sep, raw = arg.partition("=")
    if not sep or not label or "/" in label:
        label, raw = "", arg
    hf = resolve_hf_dir(raw)
    step = _step_of(hf.resolve())
    if not label:
        parts = hf.resolve().parts
        idx = max((i for i, s in enumerate(parts) if _STEP.match(s)), default=None)
        if idx is not None and idx >= 2 and parts[idx - 1] in _RUN_SUBDIRS:
            label = parts[idx - 2]  # RUN/export/step_N/policy -> RUN
        elif idx is not None:
            label = parts[idx - 1]
        else:
            label = hf.resolve().name
    return ModelSpec(label, hf, step)
