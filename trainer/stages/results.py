"""What the PRIME stages hand to one another: small typed results, passed explicitly by the loop
(trainer/train.py prime_step), never a string-keyed bag on the batch. Tensors are fp32 [B, R] response
columns on the batch's device, 0 on padding; `metrics` are the stage's public metric keys (architecture.md),
still on the device (step_metrics.py: the loop reads them once per step).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .step_metrics import DeviceMetrics


@dataclass(frozen=True)
class OldLogprobs:
    """log pi_old of the sampled tokens, recomputed by the trainer at the rollout temperature."""

    logp: torch.Tensor
    metrics: DeviceMetrics = field(default_factory=DeviceMetrics)


@dataclass(frozen=True)
class PRMScores:
    """The implicit PRM's scores: reference and PRM log-probs and the token rewards beta * log-ratio (on every
    valid token, or summed on the last one for granularity=whole)."""

    ref_logp: torch.Tensor
    prm_logp: torch.Tensor
    token_rewards: torch.Tensor
    metrics: DeviceMetrics = field(default_factory=DeviceMetrics)


@dataclass(frozen=True)
class Advantages:
    """PRIME advantages (TIS-weighted when rollout.tis_cap > 0)."""

    advantages: torch.Tensor
    metrics: DeviceMetrics = field(default_factory=DeviceMetrics)


@dataclass(frozen=True)
class PolicyTargets:
    """What the PPO-clip update needs beyond the batch: the old log-probs and the advantages."""

    old_logp: torch.Tensor
    advantages: torch.Tensor


@dataclass(frozen=True)
class Localisation:
    """Error localisation of the implicit PRM (stages/localisation.py): over `n` wrong responses with a wrong
    written step, the (tie-shared) fraction whose lowest step reward is on the first wrong step, and the
    chance rate mean(1 / steps). Both None when n is 0."""

    localised: float | None
    chance: float | None
    n: int

    def metrics(self) -> dict[str, float]:
        out = {"prm/localisation_n": float(self.n)}
        if self.n:
            out["prm/localisation"] = self.localised
            out["prm/localisation_chance"] = self.chance
        return out
