"""Three-model scoring and the PRIME implicit reward in one pass (`prime_token_rewards`), and the same pass
differentiable w.r.t. the PRM (`linear_prime_rewards`)."""

from .function import linear_prime_rewards
from .op import prime_token_rewards, prime_token_rewards_backend
from .ref import prime_token_rewards as prime_token_rewards_ref
from .types import PrimeLogprobs

__all__ = ["PrimeLogprobs", "linear_prime_rewards", "prime_token_rewards", "prime_token_rewards_backend",
           "prime_token_rewards_ref"]
