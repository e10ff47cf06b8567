"""Per-token log-probs of given labels from logits (online logsumexp over the vocabulary)."""

from .op import token_logprobs, token_logprobs_backend
from .ref import token_logprobs as token_logprobs_ref

__all__ = ["token_logprobs", "token_logprobs_backend", "token_logprobs_ref"]
