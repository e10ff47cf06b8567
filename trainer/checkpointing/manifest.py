"""manifest.json: the checkpoint's table of contents (step, layout, components, models, every file with its
size and sha256), read and checked, and each listed file verified against it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import CheckpointError
from .files import sha256_file

FORMAT = "primeflow-checkpoint/2"
MANIFEST = "manifest.json"


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


def verify_file(ckpt: Path, name: str, manifest: dict[str, Any], mode: str) -> Path:
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
