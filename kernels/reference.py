"""Pure-PyTorch references of every public op, with the same signatures (`primeflow.kernels.reference.X`).

They are the fallback on devices without a kernel and the yardstick in tests and benchmarks.
"""

from .linear_logprob.ref import linear_token_logprobs
from .logprob.ref import token_logprobs
from .prime_rewards.ref import prime_token_rewards

__all__ = ["linear_token_logprobs", "prime_token_rewards", "token_logprobs"]
