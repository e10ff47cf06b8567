"""Capture and restore every random stream a rank draws from: Python `random`, NumPy's global generator,
torch's CPU generator, every CUDA device's generator and Megatron's model-parallel CUDA RNG tracker (when
CUDA is present), plus any named `torch.Generator` the trainer owns (e.g. its data shuffler).

States are stored as tensors and plain Python values only, so `torch.load(weights_only=True)` reads them.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def capture(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """This process's RNG states (a torch.save-able dict of tensors / ints / floats / strings)."""
    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "torch_cpu": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "megatron_cuda": _megatron_tracker_states(),
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    return state


def restore(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None,
            *, source: str = "rng state") -> None:
    """Put back the streams of `capture` (raises ValueError naming `source` if they do not fit this run)."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch_cpu"])
    if torch.cuda.is_available():
        saved = state["cuda"]
        if saved is None:
            raise ValueError(f"{source}: saved without CUDA; this run has CUDA devices (their streams would "
                             "not be restored)")
        if len(saved) != torch.cuda.device_count():
            raise ValueError(f"{source}: saved {len(saved)} CUDA generator(s), this process sees "
                             f"{torch.cuda.device_count()} device(s)")
        torch.cuda.set_rng_state_all(saved)
        if state["megatron_cuda"] is not None:
            from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

            get_cuda_rng_tracker().set_states(state["megatron_cuda"])
    wanted, saved_gens = set(generators or {}), set(state["generators"])
    if wanted != saved_gens:
        raise ValueError(f"{source}: saved generators {sorted(saved_gens)}, asked to restore {sorted(wanted)}")
    for name, g in (generators or {}).items():
        g.set_state(state["generators"][name])


def _megatron_tracker_states() -> dict[str, torch.Tensor] | None:
    """Megatron's CUDA RNG tracker (dropout inside TP regions) exists only with CUDA."""
    if not torch.cuda.is_available():
        return None
    try:
        from megatron.core.tensor_parallel.random import get_cuda_rng_tracker
    except ImportError:
        return None
    states = get_cuda_rng_tracker().get_states()
    return dict(states) if states else None
