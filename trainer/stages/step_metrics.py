"""A step's metrics stay on the device until the step ends, then reach the host in one copy.

Reading a device scalar with float() / .item() / .tolist() waits for every kernel queued before it: one
device-to-host sync per value, which on a GPU drains the queue in the middle of a stage. The stages
therefore put 0-dim tensors here and the training loop calls `read()` once per step (trainer/train.py
prime_step). What still reads the device inside a step, stated: Megatron's clip reads the gradient norm
once per optimizer step (megatron/core/optimizer/clip_grads.py), the localisation measurement copies the
token rewards once, and the refit streams the weights.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


class DeviceMetrics:
    """Metric name -> a 0-dim tensor (on any device) or a host float; `read()` copies all tensors at once."""

    def __init__(self, values: Mapping[str, torch.Tensor | float] | None = None) -> None:
        self._values: dict[str, torch.Tensor | float] = {}
        self._ratios: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if values:
            self.update(values)

    def put(self, key: str, value: torch.Tensor | float) -> None:
        self._ratios.pop(key, None)
        self._values[key] = value.detach() if isinstance(value, torch.Tensor) else float(value)

    def put_ratio(self, key: str, numerator: torch.Tensor, denominator: torch.Tensor) -> None:
        """numerator / denominator, the key left out of `read()` where the denominator is 0 (a class with
        no member has no mean, and a metric that reads 0 or NaN would hide that)."""
        self._values.pop(key, None)
        self._ratios[key] = (numerator.detach(), denominator.detach())

    def update(self, other: DeviceMetrics | Mapping[str, torch.Tensor | float]) -> None:
        if isinstance(other, DeviceMetrics):
            for key, value in other._values.items():
                self.put(key, value)
            for key, (num, den) in other._ratios.items():
                self.put_ratio(key, num, den)
        else:
            for key, value in other.items():
                self.put(key, value)

    def keys(self) -> set[str]:
        """The keys `read()` may return (a ratio key is left out there when its denominator is 0)."""
        return set(self._values) | set(self._ratios)

    def read(self) -> dict[str, float]:
        """All metrics as host floats, with one device-to-host copy for every tensor together."""
        tensors = [v for v in self._values.values() if isinstance(v, torch.Tensor)]
        tensors += [t for pair in self._ratios.values() for t in pair]
        host = iter(_to_host(tensors))
        out = {k: next(host) if isinstance(v, torch.Tensor) else v for k, v in self._values.items()}
        for key in self._ratios:
            num, den = next(host), next(host)
            if den != 0:
                out[key] = num / den
        return out


def _to_host(tensors: list[torch.Tensor]) -> list[float]:
    """The scalars' values in float64, in order: stacked on the first one's device, then one copy."""
    if not tensors:
        return []
    device = tensors[0].device
    if any(t.numel() != 1 for t in tensors):
        raise ValueError(f"metrics must be scalars, got shapes {[list(t.shape) for t in tensors if t.numel() != 1]}")
    stacked = torch.stack([t.reshape(()).to(device=device, dtype=torch.float64) for t in tensors])
    return stacked.tolist()
