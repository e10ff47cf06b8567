"""Pure-PyTorch references of every public op, with the same signatures (`primeflow.kernels.reference.X`).

They are the fallback on devices without a kernel and the yardstick in tests and benchmarks.
"""

from .logprob.ref import token_logprobs

__all__ = ["token_logprobs"]
