"""primeflow.kernels: the RL log-prob hot path.

CUDA tensors run Triton kernels, CPU tensors run the C++ extension (`primeflow._C`) where an op has one,
otherwise the PyTorch reference; TRITON_INTERPRET=1 forces Triton on CPU tensors (kernel validation).
References: `primeflow.kernels.reference`.
"""

if __name__ != "primeflow.kernels":
    # This folder imported as a top-level `kernels` package: the checkout's root is on sys.path (`python -m
    # ...` run from it) and transformers probes Hugging Face's `kernels` package by importing it. Importing
    # the ops here would register primeflow's torch.library custom ops a second time, which replaces the
    # real registrations and leaves primeflow.kernels calling dead handles. Stay an empty package instead
    # (transformers then finds no usable `kernels` version, as without the shadowing).
    __all__: list[str] = []
else:
    from . import reference
    from ._backend import Backend
    from ._ext import HAS_EXTENSION
    from ._library import trusted_values
    from .linear_logprob import linear_token_logprobs, linear_token_logprobs_backend
    from .logprob import token_logprobs, token_logprobs_backend
    from .ppo_loss import PPOStats, ppo_clip_loss, ppo_clip_loss_backend
    from .prime_rewards import PrimeLogprobs, linear_prime_rewards, prime_token_rewards, prime_token_rewards_backend
    from .prm_loss import prm_ce_loss, prm_ce_loss_backend, prm_ce_terms, prm_pairwise_accuracy
    from .rloo import rloo_advantages, rloo_advantages_backend

    __all__ = ["Backend", "HAS_EXTENSION", "reference", "token_logprobs", "token_logprobs_backend",
               "linear_token_logprobs", "linear_token_logprobs_backend", "PrimeLogprobs", "prime_token_rewards",
               "prime_token_rewards_backend", "linear_prime_rewards", "rloo_advantages", "rloo_advantages_backend",
               "prm_ce_loss", "prm_ce_loss_backend", "prm_ce_terms", "prm_pairwise_accuracy", "ppo_clip_loss",
               "ppo_clip_loss_backend", "PPOStats", "trusted_values"]
