"""PPO clipped-surrogate policy loss with token-mean / seq-mean-token-mean aggregation."""

from .op import ppo_clip_loss, ppo_clip_loss_backend
from .ref import PPOStats
from .ref import ppo_clip_loss as ppo_clip_loss_ref

__all__ = ["PPOStats", "ppo_clip_loss", "ppo_clip_loss_backend", "ppo_clip_loss_ref"]
