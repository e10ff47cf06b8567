"""Fused lm_head + per-token log-probs from hidden states (`linear_token_logprobs`)."""

from .op import linear_token_logprobs, linear_token_logprobs_backend
from .ref import linear_token_logprobs as linear_token_logprobs_ref

__all__ = ["linear_token_logprobs", "linear_token_logprobs_backend", "linear_token_logprobs_ref"]
