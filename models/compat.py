"""The ONE compatibility shim that lets megatron-core's CUDA-only code paths run on CPU / gloo.

Why: megatron-core 0.16.1 allocates with `device=torch.cuda.current_device()` (RoPE frequencies, TP
linear buffers, pipeline p2p shape exchange), `device="cuda"` (pipeline schedules' token counters) and calls
`torch.cuda.synchronize()` (p2p). On a machine without CUDA each of those raises "Torch not compiled with
CUDA enabled". The tensors involved are small bookkeeping buffers whose right home on CPU is the CPU.

How: instead of patching `torch.cuda` globally (which would mislead vLLM, transformers and everything else in
the process), the `torch` name *inside the listed Megatron modules only* is rebound to a proxy that forwards
every attribute to the real torch, except that
  * `torch.cuda.current_device()` returns `torch.device("cpu")` and `torch.cuda.synchronize()` does nothing,
  * tensor factories (`zeros`, `empty`, `ones`, `full`, `tensor`, `arange`) map `device="cuda"` to CPU,
  * `torch.cuda.Stream()` / `default_stream()` / `stream(s)` (DDP's overlapped grad reduction runs on a
    communication stream) are no-op objects and contexts, `torch.cuda.empty_cache()` does nothing.
The training machinery (DDP, Float16Module, the optimizers, finalize_model_grads) is covered the same way.
Megatron's optimizers also compare `tensor.type()` names with 'torch.cuda.FloatTensor' etc.;
`cuda_type_names()` answers those checks on CPU and is used only around the optimizer's construction,
step and state loading (trainer/optimizer.py).
One call site moves a tensor with the `Tensor.cuda()` *method* (tied embeddings with PP > 1:
`LanguageModule.setup_embeddings_and_output_layer` syncs the last stage's copy of the embedding with
`weight.data.cuda()` before an all-reduce); `tensor_cuda_is_identity()` covers exactly that call and is
used only by gpt.PrimeGPTModel's override of that method.
Activation recompute and Megatron's RNG tracker (`megatron.core.tensor_parallel.random`, which sequence
parallelism's embedding dropout and every recompute checkpoint go through) save and restore the CUDA RNG
state: on CPU there is none, so inside that module the CUDA RNG calls return an empty state and set nothing,
and its own `_get_cuda_rng_state` / `_set_cuda_rng_state` helpers are replaced the same way (the CPU RNG,
which Megatron saves and restores itself, is untouched).
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
    # training machinery: DDP's grad buffers and comm "stream", Float16Module, the optimizers' fp32 masters,
    # found-inf / overflow buffers and grad-norm scratch tensors
    "megatron.core.distributed.distributed_data_parallel",
    "megatron.core.distributed.param_and_grad_buffer",
    "megatron.core.distributed.finalize_model_grads",
    "megatron.core.transformer.module",
    "megatron.core.optimizer.optimizer",
    "megatron.core.optimizer.distrib_optimizer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.optimizer.grad_scaler",
    "megatron.core.utils",  # the apex-free multi_tensor_l2norm fallback allocates its result on "cuda"
    "megatron.core.tensor_parallel.random",  # recompute checkpoints and the RNG tracker's CUDA RNG states
    # dist_checkpointing (trainer/checkpointing/sharded.py): torch.cuda.synchronize() after host copies and
    # the small int tensors of its cross-rank validation and save-plan agreement
    "megatron.core.dist_checkpointing.strategies.filesystem_async",
    "megatron.core.dist_checkpointing.strategies.state_dict_saver",
    "megatron.core.dist_checkpointing.strategies.fully_parallel",
    "megatron.core.dist_checkpointing.strategies.async_utils",
    "megatron.core.dist_checkpointing.exchange_utils",
    "megatron.core.dist_checkpointing.tensor_aware_state_dict",
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


class _NoStream:
    def wait_stream(self, other: Any) -> None:
        return None

    def synchronize(self) -> None:
        return None


class _CudaOnCpu(types.SimpleNamespace):
    """Stands in for `torch.cuda` inside the shimmed modules."""

    @staticmethod
    def current_device() -> torch.device:
        return torch.device("cpu")

    @staticmethod
    def synchronize(device: Any = None) -> None:
        return None

    @staticmethod
    def empty_cache() -> None:
        return None

    # DDP's overlapped grad reduction runs on a "communication stream": on CPU every op is already
    # ordered, so a stream is a no-op object and `torch.cuda.stream(s)` an empty context.
    Stream = staticmethod(lambda *args, **kwargs: _NoStream())
    default_stream = staticmethod(lambda *args, **kwargs: _NoStream())
    current_stream = staticmethod(lambda *args, **kwargs: _NoStream())
    stream = staticmethod(lambda *args, **kwargs: contextlib.nullcontext())

    # There is no CUDA RNG on CPU: its state is empty and seeding it does nothing (the RNG tracker's add and
    # model_parallel_cuda_manual_seed call these; its set/get helpers are replaced below, _FUNCTIONS).
    get_rng_state = staticmethod(lambda *args, **kwargs: _no_rng_state())
    manual_seed = staticmethod(lambda *args, **kwargs: None)

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cuda, name)


def _no_rng_state() -> torch.Tensor:
    return torch.empty(0, dtype=torch.uint8)


# Module functions replaced on CPU (same signatures): Megatron's own CUDA RNG state helpers.
_FUNCTIONS = {
    "megatron.core.tensor_parallel.random": {
        "_get_cuda_rng_state": lambda *args, **kwargs: _no_rng_state(),
        "_set_cuda_rng_state": lambda *args, **kwargs: None,
    },
}


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
        for attr, replacement in _FUNCTIONS.get(name, {}).items():
            setattr(module, attr, replacement)
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


@contextlib.contextmanager
def cuda_type_names() -> Iterator[None]:
    """Within the block, and only without CUDA, `tensor.type()` (no arguments) names a CPU tensor as its
    CUDA type ('torch.FloatTensor' -> 'torch.cuda.FloatTensor'). megatron-core's optimizers decide fp32 vs
    half parameters and assert fp32 gradients by comparing those names; the tensors' real dtype and device
    are untouched. Used around the Megatron optimizer's construction and step (trainer/optimizer.py)."""
    if torch.cuda.is_available():
        yield
        return
    original = torch.Tensor.type

    def type_(self, *args, **kwargs):
        name = original(self, *args, **kwargs)
        if args or kwargs or not isinstance(name, str) or not name.startswith("torch.") or self.is_cuda:
            return name
        return "torch.cuda." + name[len("torch."):]

    torch.Tensor.type = type_
    try:
        yield
    finally:
        torch.Tensor.type = original
