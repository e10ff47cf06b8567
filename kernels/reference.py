"""Pure-PyTorch references of every public op, with the same signatures (`primeflow.kernels.reference.X`).

They are the fallback on devices without a kernel and the yardstick in tests and benchmarks.
"""

from .linear_logprob.ref import linear_token_logprobs
from .logprob.ref import token_logprobs
from .ppo_loss.ref import ppo_clip_loss
from .prime_rewards.ref import prime_token_rewards
from .prm_loss.accuracy import prm_pairwise_accuracy  # a torch-only metric: the same function as the public one
from .prm_loss.ref import prm_ce_loss
from .rloo.ref import rloo_advantages

__all__ = ["linear_token_logprobs", "ppo_clip_loss", "prime_token_rewards", "prm_ce_loss", "prm_pairwise_accuracy",
           "rloo_advantages", "token_logprobs"]
