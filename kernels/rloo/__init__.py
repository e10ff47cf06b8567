"""PRIME advantages: batch_norm, leave-one-out per prompt group, discounted returns, whitening."""

from .op import rloo_advantages, rloo_advantages_backend
from .ref import rloo_advantages as rloo_advantages_ref

__all__ = ["rloo_advantages", "rloo_advantages_backend", "rloo_advantages_ref"]
