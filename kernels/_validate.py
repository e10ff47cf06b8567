"""Argument checks shared by every op: bad input raises ValueError naming the argument and what was expected."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._library import values_readable


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


class ValueChecks:
    """Checks on tensor values gathered over one op call and read back together: ONE device-to-host copy per
    call, however many conditions (an op used to sync once per check: 2-3 stalls of the CUDA stream per call).

    `add(ok, message)` takes a 0-d bool tensor computed on the device; `run()` copies all of them at once and
    raises ValueError with the first failing message. `message` may be a callable, built only on failure (a
    message quoting the offending values reads them then, on the error path)."""

    def __init__(self) -> None:
        self._flags: list[torch.Tensor] = []
        self._messages: list[str | Callable[[], str]] = []

    def add(self, ok: torch.Tensor, message: str | Callable[[], str]) -> None:
        self._flags.append(ok.reshape(()))
        self._messages.append(message)

    def run(self) -> None:
        if not self._flags:
            return
        stacked, messages = torch.stack(self._flags), self._messages
        self._flags, self._messages = [], []  # consumed, whether or not a check fails
        for ok, message in zip(stacked.tolist(), messages, strict=True):  # the one read-back
            if not ok:  # a callable message is built only here, on the error path
                raise ValueError(message if isinstance(message, str) else message())


def check_value(checks: ValueChecks | None, ok: torch.Tensor, message: str | Callable[[], str]) -> None:
    """Queue `ok` on `checks`, or (no collector given) check it now."""
    if checks is None:
        if not bool(ok):
            raise ValueError(message if isinstance(message, str) else message())
    else:
        checks.add(ok, message)


def check_float_matrix(name: str, tensor: torch.Tensor) -> None:
    require(isinstance(tensor, torch.Tensor), f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    require(tensor.dim() == 2, f"{name} must be 2-D [N, V], got shape {tuple(tensor.shape)}")
    require(tensor.is_floating_point(), f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")


def check_labels(name: str, labels: torch.Tensor, n_rows: int, vocab_size: int | None, device: torch.device,
                 checks: ValueChecks | None = None) -> None:
    """labels: int64 [N] on the same device, every id in [0, vocab_size) when vocab_size is given.

    The range check reads the labels (an out-of-range id would be an out-of-bounds read inside the kernel):
    queued on `checks` when given (read back with the call's other value checks), else read now. It is
    skipped where values cannot be read (fake tensors, torch.compile tracing: kernels/_library.py).
    """
    require(isinstance(labels, torch.Tensor), f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    require(labels.dtype == torch.int64, f"{name} must be int64, got dtype {labels.dtype}")
    require(labels.dim() == 1 and labels.shape[0] == n_rows,
            f"{name} must have shape [{n_rows}] (one id per logits row), got {tuple(labels.shape)}")
    require(labels.device == device, f"{name} is on {labels.device} but logits are on {device}")
    if vocab_size is not None and labels.numel() > 0 and values_readable(labels):
        check_value(checks, ((labels >= 0) & (labels < vocab_size)).all(),
                 lambda: f"{name} must lie in [0, {vocab_size}) (the vocabulary), got values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")


def check_temperature(temperature: float) -> None:
    require(isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0,
            f"temperature must be a finite number > 0, got {temperature!r}")
