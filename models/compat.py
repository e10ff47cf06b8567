"""The ONE compatibility shim that lets megatron-core's CUDA-only code paths run on CPU / gloo.

Why: megatron-core 0.16.1 allocates with `device=torch.cuda.current_device()` (RoPE frequencies, TP
linear buffers, pipeline p2p shape exchange), `device="cuda"` (pipeline schedules' token counters) and calls
`torch.cuda.synchronize()` (p2p). On a machine without CUDA each of those raises "Torch not compiled with
CUDA enabled". The tensors involved are small bookkeeping buffers whose right home on CPU is the CPU.

How: instead of patching `torch.cuda` globally (which would mislead vLLM, transformers and everything else in
the process), the `torch` name *inside the listed Megatron modules only* is rebound to a proxy that forwards
every attribute to the real torch, except that
  * `torch.cuda.current_device()` returns `torch.device("cpu")` and `torch.cuda.synchronize()` does nothing,
  * tensor factories (`zeros`, `empty`, `ones`, `full`, `tensor`, `arange`) map `device="cuda"` to CPU.
One call site moves a tensor with the `Tensor.cuda()` *method* (tied embeddings with PP > 1:
`LanguageModule.setup_embeddings_and_output_layer` syncs the last stage's copy of the embedding with
`weight.data.cuda()` before an all-reduce); `tensor_cuda_is_identity()` covers exactly that call and is
used only by gpt.PrimeGPTModel's override of that method.
It is a no-op when CUDA is available (GPU machines run Megatron unmodified), and idempotent.
`enable_cpu_megatron()` is called by `build_model`; tests check the shimmed paths (RoPE, TP layers, PP
schedules) against transformers.
"""

from __future__ import annotations

import contextlib
import importlib
import types
from collections.abc import Iterator
from typing import Any

import torch

# Megatron modules whose CUDA-only calls are reached by our CPU paths (TP forward/backward, RoPE, PP).
_MODULES = (
    "megatron.core.models.common.embeddings.rotary_pos_embedding",
    "megatron.core.models.gpt.gpt_model",
    "megatron.core.tensor_parallel.layers",
    "megatron.core.tensor_parallel.mappings",
    "megatron.core.transformer.transformer_layer",
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.pipeline_parallel.p2p_communication",
)
_FACTORIES = ("zeros", "empty", "ones", "full", "tensor", "arange", "zeros_like", "empty_like")
_MARK = "_primeflow_cpu_shim"


def _cpu_device(device: Any) -> Any:
    if device is None:
        return None
    if isinstance(device, int) or (isinstance(device, str) and device.startswith("cuda")) or (
            isinstance(device, torch.device) and device.type == "cuda"):
        return torch.device("cpu")
    return device


class _CudaOnCpu(types.SimpleNamespace):
    """Stands in for `torch.cuda` inside the shimmed modules."""

    @staticmethod
    def current_device() -> torch.device:
        return torch.device("cpu")

    @staticmethod
    def synchronize(device: Any = None) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cuda, name)


class _TorchOnCpu(types.ModuleType):
    """Stands in for `torch` inside the shimmed modules: everything forwards to torch except the above."""

    def __init__(self) -> None:
        super().__init__("torch")
        self.cuda = _CudaOnCpu()
        for name in _FACTORIES:
            setattr(self, name, self._factory(getattr(torch, name)))

    @staticmethod
    def _factory(fn):
        def wrapped(*args, **kwargs):
            if "device" in kwargs:
                kwargs["device"] = _cpu_device(kwargs["device"])
            return fn(*args, **kwargs)

        wrapped.__name__ = fn.__name__
        return wrapped

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


def enable_cpu_megatron() -> bool:
    """Install the shim into the listed Megatron modules if this process has no CUDA. Returns whether the
    shim is active."""
    if torch.cuda.is_available():
        return False
    proxy = None
    for name in _MODULES:
        module = importlib.import_module(name)
        if getattr(module, _MARK, False):
            continue
        proxy = proxy or _TorchOnCpu()
        module.torch = proxy
        setattr(module, _MARK, True)
    return True


@contextlib.contextmanager
def tensor_cuda_is_identity() -> Iterator[None]:
    """Within the block, and only without CUDA, `tensor.cuda()` returns the tensor unchanged."""
    if torch.cuda.is_available():
        yield
        return
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = original
