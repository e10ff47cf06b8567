"""What the `torch.library` custom ops of primeflow.kernels share.

Every device computation of the public ops (the Triton launches and their chunked PyTorch twins) is a
custom op in the `primeflow` namespace (`torch.ops.primeflow.*`, defined in each op's `custom_ops.py`)
with a fake implementation that only states output shapes, dtypes and devices. That is what lets a model
that uses the kernels run under `FakeTensorMode` (device-placement tests with fake CUDA tensors on a CPU
machine), trace under `torch.compile` without graph breaks, and export: tracing never launches a kernel on
tensors that have no data. The autograd Functions around the ops stay in Python because they also hold
the tensor-parallel collectives, which a custom op's schema cannot take (a ProcessGroup argument).

Custom-op schemas have no optional outputs: an output that is absent (no entropy requested, no per-sequence
sums) is returned as an empty [0] tensor and turned back into None by the Python wrapper, which knows from
its own flags which outputs exist.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch._subclasses.fake_tensor import is_fake

NAMESPACE = "primeflow"


def qualified(name: str) -> str:
    """The op's name as torch.library wants it: `primeflow::<name>`."""
    return f"{NAMESPACE}::{name}"


_TRUSTED_VALUES: ContextVar[bool] = ContextVar("primeflow_trusted_values", default=False)


@contextmanager
def trusted_values() -> Iterator[None]:
    """Skip the value checks (label ranges, mask and outcome contents) inside the block: each one reads the
    device, a host sync per op call, and a training step calls the ops once per micro-batch. For a caller
    that checked the values once where they were made: the trainer checks every step's token ids, masks
    and outcomes on the host when it builds the batch (trainer/batch.py). Shape, dtype and device checks
    still run."""
    token = _TRUSTED_VALUES.set(True)
    try:
        yield
    finally:
        _TRUSTED_VALUES.reset(token)


def values_readable(*tensors: torch.Tensor | None) -> bool:
    """Whether checks that read tensor values (label ranges, mask contents) can run: not inside
    `trusted_values()`, not while torch.compile traces (a read would be a graph break and a host sync inside
    the graph) and not on fake or meta tensors, which carry no data. Shape, dtype and device checks run
    either way."""
    if torch.compiler.is_compiling() or _TRUSTED_VALUES.get():  # dynamo cannot trace ContextVar.get
        return False
    return not any(t is not None and (is_fake(t) or t.is_meta) for t in tensors)


def absent(like: torch.Tensor) -> torch.Tensor:
    """The empty [0] fp32 placeholder for an output that was not requested."""
    return like.new_empty(0, dtype=torch.float32)


def present(output: torch.Tensor, exists: bool) -> torch.Tensor | None:
    return output if exists else None
