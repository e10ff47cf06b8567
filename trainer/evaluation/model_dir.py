"""Which HF checkpoint directory a ``--model`` argument means.

Accepted, in this order:

1. an HF directory (has ``config.json``);
2. a run checkpoint ``.../checkpoints/step_N`` holding the trainer's export ``policy_hf/``;
3. a run directory: the ``policy_hf/`` of its highest ``checkpoints/step_N``.

``label=PATH`` names the table row; otherwise the label is the run directory's name (for checkpoints) or the
HF directory's name, and the Step column comes from a ``step_N`` component of the path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_STEP = re.compile(r"^step_(\d+)$")


@dataclass(frozen=True)
class ModelSpec:
    label: str
    path: Path  # the HF directory
    step: int | None


def _step_of(path: Path) -> int | None:
    for part in reversed(path.parts):
        m = _STEP.match(part)
        if m:
            return int(m.group(1))
    return None


def resolve_hf_dir(path: str | Path) -> Path:
    """The HF checkpoint directory for ``path`` (see the module docstring); raises saying what was tried."""
    p = Path(path)
    if (p / "config.json").is_file():
        return p
    if (p / "policy_hf" / "config.json").is_file():
        return p / "policy_hf"
    steps = []
    if (p / "checkpoints").is_dir():
        for d in (p / "checkpoints").iterdir():
            m = _STEP.match(d.name)
            if m and (d / "policy_hf" / "config.json").is_file():
                steps.append((int(m.group(1)), d / "policy_hf"))
    if steps:
        return max(steps)[1]
    if not p.exists():
        raise FileNotFoundError(f"--model {p}: no such directory")
    raise FileNotFoundError(
        f"--model {p}: not a model: expected an HF directory ({p}/config.json), a run checkpoint "
        f"({p}/policy_hf/config.json) or a run directory ({p}/checkpoints/step_N/policy_hf/config.json)"
    )


def parse_model_arg(arg: str) -> ModelSpec:
    """``[label=]PATH`` -> ModelSpec (the path resolved to an HF directory)."""
    label, sep, raw = arg.partition("=")
    if not sep or not label or "/" in label:
        label, raw = "", arg
    hf = resolve_hf_dir(raw)
    step = _step_of(hf.resolve())
    if not label:
        if step is not None:
            # .../<run>/checkpoints/step_N/policy_hf -> <run>
            parts = hf.resolve().parts
            idx = max(i for i, s in enumerate(parts) if _STEP.match(s))
            label = parts[idx - 2] if idx >= 2 and parts[idx - 1] == "checkpoints" else parts[idx - 1]
        else:
            label = hf.resolve().name
    return ModelSpec(label, hf, step)
