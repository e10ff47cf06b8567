"""Output buffers that expose unwritten elements (a plain module on tests/'s pythonpath, not conftest.py: which
conftest `import conftest` finds depends on sys.path, so test modules must not import from one)."""

from __future__ import annotations

import torch


def nan_poisoned(shape, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """An output buffer full of NaN: a kernel that forgets to write an element cannot pass a test."""
    return torch.full(shape, float("nan"), dtype=dtype, device=device)
