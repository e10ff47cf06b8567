"""primeflow.kernels: the RL log-prob hot path.

CUDA tensors run Triton kernels, CPU tensors run the C++ extension (`primeflow._C`) where an op has one,
otherwise the PyTorch reference; TRITON_INTERPRET=1 forces Triton on CPU tensors (kernel validation).
References: `primeflow.kernels.reference`.
"""

from . import reference
from ._backend import Backend
from ._ext import HAS_EXTENSION
from .linear_logprob import linear_token_logprobs, linear_token_logprobs_backend
from .logprob import token_logprobs, token_logprobs_backend
from .ppo_loss import PPOStats, ppo_clip_loss, ppo_clip_loss_backend
from .prime_rewards import PrimeLogprobs, prime_token_rewards, prime_token_rewards_backend
from .prm_loss import prm_ce_loss, prm_ce_loss_backend, prm_pairwise_accuracy
from .rloo import rloo_advantages, rloo_advantages_backend

__all__ = ["Backend", "HAS_EXTENSION", "reference", "token_logprobs", "token_logprobs_backend",
           "linear_token_logprobs", "linear_token_logprobs_backend", "PrimeLogprobs", "prime_token_rewards",
           "prime_token_rewards_backend", "rloo_advantages", "rloo_advantages_backend", "prm_ce_loss",
           "prm_ce_loss_backend", "prm_pairwise_accuracy", "ppo_clip_loss", "ppo_clip_loss_backend", "PPOStats"]
