"""Durable file writes for checkpoints: streamed sha256 while writing, fsync of files and directories.

Why hash while writing: a checkpoint file is read back only to verify it at load time; hashing the byte
stream as torch.save produces it costs no extra read of a multi-GB shard at save time.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

_CHUNK = 8 << 20  # 8 MiB reads when verifying


class _HashingWriter:
    """A write-only binary stream over an open file that sha256-hashes and counts what passes through."""

    def __init__(self, f):
        self._f = f
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        view = memoryview(data)
        self.sha256.update(view)
        self.size += view.nbytes
        return self._f.write(view)

    def flush(self) -> None:
        self._f.flush()


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (created / renamed children) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_torch(obj: Any, path: Path) -> dict[str, Any]:
    """torch.save `obj` to `path` (new file), fsync it; returns {"size", "sha256"} of the bytes written."""
    with open(path, "xb") as f:
        writer = _HashingWriter(f)
        torch.save(obj, writer)
        f.flush()
        os.fsync(f.fileno())
    return {"size": writer.size, "sha256": writer.sha256.hexdigest()}


def write_bytes(data: bytes, path: Path) -> dict[str, Any]:
    """Write `data` to the new file `path` and fsync it; returns {"size", "sha256"}."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def write_json(obj: Any, path: Path) -> dict[str, Any]:
    return write_bytes((json.dumps(obj, indent=1, sort_keys=True) + "\n").encode(), path)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()
