"""The step's training batch as tensors, identical on every rank.

Rows are responses, the K responses of a prompt contiguous (rows [g*K, (g+1)*K) = group g). Sequences are
right padded: row i is prompt_i + response_i + padding in `input_ids [B, T]`. Per-token quantities live in
*response-aligned* tensors `[B, R]` (column j = response token j; R = the longest response): the RLOO,
PRM and PPO kernels then see only response tokens, and `response_mask [B, R]` is 1 up to and including the
first EOS (all tokens of a truncated response).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace

import torch

from .rollout.types import RolloutGroup


@dataclass
class TrainBatch:
    input_ids: torch.Tensor            # [B, T] int64, prompt + response, right padded with pad_id
    attention_mask: torch.Tensor       # [B, T] int64
    prompt_len: torch.Tensor           # [B] int64
    response_mask: torch.Tensor        # [B, R] bool
    outcome: torch.Tensor              # [B] fp32 verifier scores
    vllm_logp: torch.Tensor            # [B, R] fp32 sampled-token log-probs reported by vLLM (0 on padding)
    truncated: torch.Tensor            # [B] bool, finish reason "length"
    group_size: int
    # [B] real tokens per row (prompt + response), on the host: packing plans and packs micro-batches from
    # these integers, so it never reads the device copy of the batch back (no device-to-host syncs)
    seq_lens: list[int] = field(default_factory=list)
    response_lens: list[int] = field(default_factory=list)  # [B] valid response tokens per row, on the host

    @property
    def rows(self) -> int:
        return self.input_ids.shape[0]

    @property
    def device(self) -> torch.device:
        return self.input_ids.device

    def to(self, device: torch.device | str) -> TrainBatch:
        """The batch with every tensor on `device`: the step's one host-to-device move (when the rollout
        returns); the stages then allocate everything they make on `batch.device`."""
        moved = {f.name: getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)
                 if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **moved)



def check_batch_values(batch: TrainBatch, *, vocab_size: int) -> None:
    """The value checks the kernels would otherwise make on every call (kernels.trusted_values), made once
    per step on the host copy before it moves to the device: every token id in [0, vocab_size), every
    response with at least one valid token (its outcome sits on its last one), every outcome in [0, 1] (a
    soft BCE label; NaN propagates, as in the kernels). The response mask is a prefix mask by construction."""
    if batch.input_ids.device.type != "cpu":
        raise ValueError("check_batch_values reads the host copy of the batch (before TrainBatch.to)")
    lo, hi = int(batch.input_ids.min()), int(batch.input_ids.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"token ids must lie in [0, {vocab_size}) (the model's vocabulary), got [{lo}, {hi}]")
    empty = [i for i, n in enumerate(batch.response_lens) if n < 1]
    if empty:
        raise ValueError(f"responses {empty[:8]} have no token: every response needs one to carry its outcome")
    bad = ((batch.outcome < 0) | (batch.outcome > 1)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"outcomes must lie in [0, 1]; responses {bad[:8]} have {batch.outcome[bad[:8]].tolist()}")


def build_train_batch(prompt_ids: list[list[int]], response_ids: list[list[int]], vllm_logp: list[list[float]],
                      finish_reasons: list[str], outcome: list[float], *, group_size: int,
                      eos_ids: set[int] | list[int], pad_id: int) -> TrainBatch:
    """Tensorize rollouts. The response mask ends at the first stop token in `eos_ids` (inclusive); tokens
    after it (if the sampler returned any) are masked out. Empty responses get one masked pad column."""
    B = len(prompt_ids)
    if not (len(response_ids) == len(vllm_logp) == len(finish_reasons) == len(outcome) == B):
        raise ValueError("rollout lists must all have one entry per response")
    if B % group_size != 0:
        raise ValueError(f"{B} responses is not a whole number of groups of {group_size}")
    R = max(1, max(len(r) for r in response_ids))
    T = max(len(p) + len(r) for p, r in zip(prompt_ids, response_ids, strict=True))
    input_ids = torch.full((B, T), pad_id, dtype=torch.int64)
    attention = torch.zeros((B, T), dtype=torch.int64)
    resp_mask = torch.zeros((B, R), dtype=torch.bool)
    logp = torch.zeros((B, R), dtype=torch.float32)
    for i, (p, r, lp) in enumerate(zip(prompt_ids, response_ids, vllm_logp, strict=True)):
        if len(lp) != len(r):
            raise ValueError(f"response {i}: {len(r)} tokens but {len(lp)} log-probs")
        n = len(r)
        stops = [k for k, tok in enumerate(r) if tok in eos_ids]
        if stops:
            n = stops[0] + 1
        seq = p + r
        input_ids[i, :len(seq)] = torch.tensor(seq, dtype=torch.int64)
        attention[i, :len(p) + n] = 1
        resp_mask[i, :n] = True
        logp[i, :n] = torch.tensor(lp[:n], dtype=torch.float32)
    return TrainBatch(
        input_ids=input_ids, attention_mask=attention,
        prompt_len=torch.tensor([len(p) for p in prompt_ids], dtype=torch.int64),
        response_mask=resp_mask, outcome=torch.tensor(outcome, dtype=torch.float32), vllm_logp=logp,
        truncated=torch.tensor([f == "length" for f in finish_reasons]), group_size=group_size,
        seq_lens=attention.sum(-1).tolist(), response_lens=resp_mask.sum(-1).tolist())


def train_batch_from_groups(groups: Sequence[RolloutGroup], *, group_size: int, eos_ids: set[int] | list[int],
                            pad_id: int) -> TrainBatch:
    """The rollout groups as one batch, in order: rows [g*K, (g+1)*K) are group g's K responses."""
    sizes = sorted({len(g) for g in groups})
    if sizes != [group_size]:
        raise ValueError(f"expected rollout groups of {group_size} responses each, got group sizes {sizes}")
    return build_train_batch([g.prompt_ids for g in groups for _ in range(group_size)],
                             [r for g in groups for r in g.response_ids], [lp for g in groups for lp in g.logprobs],
                             [f for g in groups for f in g.finish_reasons], [s for g in groups for s in g.scores],
                             group_size=group_size, eos_ids=eos_ids, pad_id=pad_id)


def response_columns(logp_BT1: torch.Tensor, prompt_len_B: torch.Tensor,
                     response_mask_BR: torch.Tensor) -> torch.Tensor:
    """Gather the response tokens' log-probs out of `sequence_logprobs` output ([B, T-1], column t scores
    token t+1) into response-aligned [B, R]: response token j of row i is scored at column P_i - 1 + j.
    Masked positions are exactly 0 (they may index past the row's sequence)."""
    B, R = response_mask_BR.shape
    arange_R = torch.arange(R, device=prompt_len_B.device)
    cols_BR = (prompt_len_B.unsqueeze(1) - 1 + arange_R.unsqueeze(0)).clamp(max=logp_BT1.shape[1] - 1)
    gathered = torch.gather(logp_BT1, 1, cols_BR)
    return torch.where(response_mask_BR, gathered, 0.0)
