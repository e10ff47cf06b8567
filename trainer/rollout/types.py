"""Plain data types of the rollout engine: sampling settings, a generated batch (with its padded tensor
view), one prompt's verified group of responses (what the rollout stage hands to the batch), and the
statistics of one weight sync. No vLLM import here: the trainer and tests can build and inspect these
without paying for vLLM.

Legend: B rows (= prompts x n, the n samples of a prompt contiguous), T positions (prompt + response,
right padded), T-1 columns of `sequence_logprobs` (column t scores token t+1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

FINISH_REASONS = ("stop", "length")


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample responses.

    temperature: 0 = greedy; > 0 samples from softmax(logits / temperature).
    top_p / top_k: nucleus / top-k filtering (1.0 / -1 = off). The reported log-probs are vLLM's
        *processed* log-probs (after temperature, top-k, top-p; see engine.py), so they equal the trainer's
        `sequence_logprobs(..., temperature=temperature)` only when top_p == 1 and top_k == -1.
    max_tokens: response length cap; a response that reaches it finishes with reason "length".
    seed: None = the engine's seeded stream (reproducible per engine seed and call order); an int makes
        this call reproducible on its own (row r of the output uses seed + r).
    stop_token_ids: extra ids that end a response (the tokenizer/generation_config EOS ids always do);
        the stop token is part of the response.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 256
    seed: int | None = None
    stop_token_ids: tuple[int, ...] | list[int] | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, (int, float)) and self.temperature >= 0):
            raise ValueError(f"SamplingConfig.temperature must be a number >= 0, got {self.temperature!r}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ValueError(f"SamplingConfig.top_p must be in (0, 1], got {self.top_p!r}")
        if not (isinstance(self.top_k, int) and (self.top_k == -1 or self.top_k >= 1)):
            raise ValueError(f"SamplingConfig.top_k must be -1 (off) or an int >= 1, got {self.top_k!r}")
        if not (isinstance(self.max_tokens, int) and self.max_tokens >= 1):
            raise ValueError(f"SamplingConfig.max_tokens must be an int >= 1, got {self.max_tokens!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            raise ValueError(f"SamplingConfig.seed must be None or an int, got {self.seed!r}")
        if self.stop_token_ids is not None and not all(isinstance(t, int) for t in self.stop_token_ids):
            raise ValueError(f"SamplingConfig.stop_token_ids must be a list of ints, got {self.stop_token_ids!r}")


@dataclass
class RolloutBatch:
    """B = len(prompts) * group_size sampled responses; rows r*group_size .. (r+1)*group_size-1 are the
    samples of input prompt r (`prompt_index[row] == r`).

    prompt_ids[row]: the prompt as vLLM saw it (after left truncation if the engine truncates).
    response_ids[row]: generated ids, including the stop/EOS token when finish_reasons[row] == "stop".
    logprobs[row][j]: vLLM's log-prob of response_ids[row][j] (fp32 values from the sampler).
    finish_reasons[row]: "stop" (EOS or a stop token) or "length" (hit max_tokens).
    prompt_truncated[row]: whether the prompt was left-truncated to fit (only with truncate_prompts).
    """

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    logprobs: list[list[float]]
    finish_reasons: list[str]
    group_size: int
    prompt_index: list[int]
    prompt_truncated: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        B = len(self.prompt_ids)
        for name in ("response_ids", "logprobs", "finish_reasons", "prompt_index"):
            if len(getattr(self, name)) != B:
                raise ValueError(f"RolloutBatch.{name} has {len(getattr(self, name))} rows, prompt_ids has {B}")
        if not self.prompt_truncated:
            self.prompt_truncated = [False] * B
        for row, (resp, lps) in enumerate(zip(self.response_ids, self.logprobs, strict=True)):
            if len(resp) != len(lps):
                raise ValueError(f"RolloutBatch row {row}: {len(resp)} response ids but {len(lps)} log-probs")

    def __len__(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_response_tokens(self) -> int:
        return sum(len(r) for r in self.response_ids)

    def padded(self, pad_id: int) -> dict[str, torch.Tensor]:
        """The batch as right-padded CPU tensors for the trainer (T = longest prompt + response):

        input_ids      int64   [B, T]    prompt then response, then `pad_id`.
        attention_mask int64   [B, T]    1 on prompt and response tokens, 0 on padding.
        response_mask  float32 [B, T-1]  1 on the columns of `sequence_logprobs(input_ids, attention_mask)`
                                         that score a response token: row b with prompt length P and
                                         response length R has ones at columns P-1 .. P+R-2 (column t
                                         scores token t+1), i.e. every response token up to and including
                                         the EOS/stop token; 0 on prompt-scoring columns and padding.
        vllm_logp      float32 [B, T-1]  vLLM's log-prob of the same tokens in the same columns, 0 elsewhere.
        The response_mask/vllm_logp layout is exactly the layout of `sequence_logprobs`' output, so
        `logprob_mismatch(vllm_logp, trainer_logp, response_mask)` compares like with like.
        """
        B = len(self)
        if B == 0:
            raise ValueError("RolloutBatch.padded: the batch is empty")
        lengths = [len(p) + len(r) for p, r in zip(self.prompt_ids, self.response_ids, strict=True)]
        T = max(max(lengths), 2)
        input_ids = torch.full((B, T), int(pad_id), dtype=torch.int64)
        attention_mask = torch.zeros(B, T, dtype=torch.int64)
        response_mask = torch.zeros(B, T - 1, dtype=torch.float32)
        vllm_logp = torch.zeros(B, T - 1, dtype=torch.float32)
        for b, (prompt, resp, lps) in enumerate(zip(self.prompt_ids, self.response_ids, self.logprobs,
                                                    strict=True)):
            P, R = len(prompt), len(resp)
            if P == 0:
                raise ValueError(f"RolloutBatch.padded: row {b} has an empty prompt (its first response token "
                                 "would have no column in sequence_logprobs)")
            input_ids[b, :P + R] = torch.tensor(prompt + resp, dtype=torch.int64)
            attention_mask[b, :P + R] = 1
            if R:
                response_mask[b, P - 1:P - 1 + R] = 1.0
                vllm_logp[b, P - 1:P - 1 + R] = torch.tensor(lps, dtype=torch.float32)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask,
                "vllm_logp": vllm_logp}


@dataclass(frozen=True)
class RolloutGroup:
    """The K responses sampled for one prompt, with their verifier scores: the one form a rollout takes from
    the rollout stage (trainer/stages/rollout.py) to the training batch (trainer/batch.py) and the
    localisation stage. Per-response lists are in sample order, K entries each (see RolloutBatch for the
    meaning of ids, log-probs and finish reasons)."""

    uid: str                        # the prompt record's uid (step labels are looked up by it)
    prompt_ids: list[int]           # as vLLM saw it (after any left truncation)
    response_ids: list[list[int]]
    logprobs: list[list[float]]
    finish_reasons: list[str]
    texts: list[str]                # decoded responses, as the verifier read them
    scores: list[float]             # verifier scores
    policy_version: int             # refits of the policy before it sampled these (PRIME is on-policy)

    def __post_init__(self) -> None:
        K = len(self.response_ids)
        for name in ("logprobs", "finish_reasons", "texts", "scores"):
            if len(getattr(self, name)) != K:
                raise ValueError(f"RolloutGroup {self.uid!r}: {len(getattr(self, name))} {name} for {K} responses")
        for k, (resp, lps) in enumerate(zip(self.response_ids, self.logprobs, strict=True)):
            if len(resp) != len(lps):
                raise ValueError(f"RolloutGroup {self.uid!r} response {k}: {len(resp)} ids but {len(lps)} log-probs")
        bad = sorted(set(self.finish_reasons) - set(FINISH_REASONS))
        if bad:
            raise ValueError(f"RolloutGroup {self.uid!r}: unknown finish reason(s) {bad}; expected {FINISH_REASONS}")

    def __len__(self) -> int:
        return len(self.response_ids)

    @property
    def truncated(self) -> list[bool]:
        """Per response: it hit max_tokens (finish reason "length")."""
        return [f == "length" for f in self.finish_reasons]


@dataclass(frozen=True)
class RefitStats:
    """One weight sync: wall seconds (plan + gather + load + cache reset), bytes fed to vLLM (full HF tensors
    in the trainer's dtype, counted once per engine), gb_per_s = bytes / seconds / 1e9, buckets = collective
    rounds (TP gather and/or PP broadcast of one bucket each), tensors = HF tensors fed."""

    seconds: float
    bytes: int
    gb_per_s: float
    buckets: int
    tensors: int = 0

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """Metric keys for the trainer's step log: time/refit, refit/gb_per_s, refit/bytes, refit/buckets."""
        return {f"{prefix}time/refit": self.seconds, f"{prefix}refit/gb_per_s": self.gb_per_s,
                f"{prefix}refit/bytes": float(self.bytes), f"{prefix}refit/buckets": float(self.buckets)}
