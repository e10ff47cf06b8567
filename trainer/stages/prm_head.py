"""The PRM stage's fused head: per micro-batch the reference and the PRM trunks give their final hidden states
and ONE kernels.linear_prime_rewards call gives both models' response log-probs, the token rewards
beta * log-ratio and each response's reward sum R_b (what the CE of prime_spec 4.1 needs), differentiable
w.r.t. the PRM's hidden states and output weight.

Only the response tokens go through the head: their hidden states are gathered out of the packed micro-batch
(the prompt's log-probs are never used), so its GEMMs are shorter than the two-head path's, which scores every
packed token. Both trunks see the same packed micro-batch, so while the PRM equals the reference (step 0)
their hidden states, and therefore the kernel's two sets of pieces, are bitwise equal: rewards exactly 0.

Under TP the head is vocab-parallel: each rank holds its shard of both output weights, the one
linear_prime_rewards call merges the shards' pieces with one all-gather, and its backward all-reduces d hidden
over the TP group inside the op, as the models' own linear_token_logprobs head does (models/gpt.py), so the
hidden states reach it the same way: as they are without sequence parallelism, gathered over the TP group with
it (the gather's backward keeping this rank's slice).

Legend: b rows of the micro-batch, R response columns, n response tokens of the micro-batch, t packed tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from primeflow.kernels import linear_prime_rewards
from primeflow.models import logprobs as packed_io
from primeflow.models import unwrap_model
from primeflow.models.hidden import final_hidden_states, output_weight

from .. import parallel
from ..batch import TrainBatch
from ..config import Config
from ..models_setup import PrimeModels
from .logprobs import all_rows_sum, micro_batch_tensors, row_index


def fused_head_supported(models: PrimeModels, config: Config) -> bool:
    """Whether the PRM stage runs on the fused head: the one place this is decided.

    The two-head path (the reference and the PRM scored by separate linear_token_logprobs heads, the log-ratio
    taken in torch) stays for: prm.fused_head false (to compare); ref_type=policy (the reference is the
    policy's old log-probs, there is no reference trunk); PP > 1 (the head lives on the last stage inside
    Megatron's schedule, which hands one model's output to the loss); a padded vocabulary (the kernel has no
    valid-vocabulary bound; models/gpt.py masks padded columns on its logits path only). TP > 1 runs the
    fused head vocab-parallel (module docstring)."""
    if not config.prm.fused_head or config.prime.ref_type != "freeze" or models.ref is None:
        return False
    if parallel.layout().pp > 1:
        return False
    inner = [unwrap_model(m) for m in (models.prm, models.ref)]
    return all(m.vocab_size == m.real_vocab_size for m in inner)


@dataclass(frozen=True)
class ResponseTokens:
    """Where a micro-batch's response tokens are, as device index tensors built from the batch's host lengths
    (no device read-back): response token j of row k is scored by packed position src_n[cu[k] + j] and lands
    at flat position dst_n[cu[k] + j] = k * R + j of the micro-batch's [b, R]."""

    src_n: torch.Tensor   # int64 [n]
    dst_n: torch.Tensor   # int64 [n]
    cu_b1: torch.Tensor   # int32 [b + 1]: row k's response tokens are [cu[k], cu[k+1])
    rows: int
    columns: int


def response_tokens(batch: TrainBatch, rows: list[int]) -> ResponseTokens:
    """The response tokens of `rows` packed as stages.logprobs packs them (rows in order, from column 0)."""
    R = batch.response_mask.shape[1]
    src, dst, cu = [], [], [0]
    offset = 0
    for k, r in enumerate(rows):
        length, n = batch.seq_lens[r], batch.response_lens[r]
        prompt = length - n
        if n and prompt < 1:
            raise ValueError(f"row {r}: a response needs at least one prompt token before it")
        # packed token i scores token i + 1 of its row: response token j (row column prompt + j) is scored
        # at packed position offset + prompt - 1 + j
        src += range(offset + prompt - 1, offset + prompt - 1 + n)
        dst += range(k * R, k * R + n)
        cu.append(cu[-1] + n)
        offset += length
    device = batch.device
    return ResponseTokens(packed_io.host_to_device(src, torch.int64, device),
                          packed_io.host_to_device(dst, torch.int64, device),
                          packed_io.host_to_device(cu, torch.int32, device), len(rows), R)


@dataclass(frozen=True)
class HeadScores:
    """One micro-batch through the fused head: per response token [n] (fp32, detached except through the
    op) and each row's reward sum R_b = beta * sum_t log-ratio [b], differentiable w.r.t. the PRM."""

    prm_logp_n: torch.Tensor
    ref_logp_n: torch.Tensor
    reward_n: torch.Tensor
    reward_sum_b: torch.Tensor
    tokens: ResponseTokens

    def to_rows(self, values_n: torch.Tensor) -> torch.Tensor:
        """[n] -> [b, R] response columns (0 on padding), detached."""
        t = self.tokens
        out = values_n.new_zeros(t.rows * t.columns)
        return out.index_copy(0, t.dst_n, values_n.detach()).view(t.rows, t.columns)


def fused_head_scores(prm: torch.nn.Module, ref: torch.nn.Module, batch: TrainBatch, rows: list[int], *,
                      beta: float) -> HeadScores:
    """Both trunks on the packed rows (the reference without grad), then one linear_prime_rewards call on the
    response tokens' hidden states, vocab-parallel over the TP group when TP > 1. PP = 1
    (fused_head_supported)."""
    input_ids, _, lengths = micro_batch_tensors(batch, rows)
    # under sequence parallelism the token count must split over the TP ranks: padding goes after the rows,
    # so the response tokens' packed positions (response_tokens) do not move
    packed = packed_io.pack_rows(input_ids, [0] * len(rows), lengths, multiple_of=packed_io.token_multiple(prm))
    tokens = response_tokens(batch, rows)
    with torch.no_grad():
        ref_hidden_nH = final_hidden_states(ref, packed).index_select(0, tokens.src_n)
    prm_hidden_nH = final_hidden_states(prm, packed).index_select(0, tokens.src_n)
    labels_n = packed.labels_1t[0].index_select(0, tokens.src_n)
    tp_group = parallel.tp_group() if parallel.layout().tp > 1 else None
    out = linear_prime_rewards(labels_n, prm=(prm_hidden_nH, output_weight(prm)),
                               ref=(ref_hidden_nH, output_weight(ref)), beta=beta, cu_seqlens=tokens.cu_b1,
                               tp_group=tp_group)
    return HeadScores(out.prm_logp, out.ref_logp, out.reward, out.seq_reward_sum, tokens)


class HeadRecord:
    """The fused head's results over the batch, [B, R] PRM and reference log-probs and token rewards and [B]
    reward sums, in ONE buffer so that the DP ranks combine them with one all-reduce (all_rows_sum)."""

    def __init__(self, batch: TrainBatch) -> None:
        B, self._R = batch.response_mask.shape
        self._buf = torch.zeros((B, 3 * self._R + 1), dtype=torch.float32, device=batch.device)

    def add(self, rows: list[int], scores: HeadScores) -> None:
        parts = [scores.to_rows(x) for x in (scores.prm_logp_n, scores.ref_logp_n, scores.reward_n)]
        sums_b1 = scores.reward_sum_b.detach().unsqueeze(1)
        self._buf.index_copy_(0, row_index(rows, self._buf), torch.cat([*parts, sums_b1], dim=1))

    def combined(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(prm_logp [B, R], ref_logp [B, R], token rewards [B, R], reward sums [B]), summed over DP ranks
        (each row recorded on one rank): call once, on every rank."""
        buf, R = all_rows_sum(self._buf), self._R
        return buf[:, :R], buf[:, R:2 * R], buf[:, 2 * R:3 * R], buf[:, 3 * R]


@contextlib.contextmanager
def evaluating(*models: torch.nn.Module) -> Iterator[None]:
    """The models in eval mode for the block (scoring), their training flags restored afterwards."""
    flags = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for m, flag in zip(models, flags, strict=True):
            m.train(flag)


@torch.no_grad()
def score_with_head(models: PrimeModels, batch: TrainBatch, plan: list[list[int]], record: HeadRecord, *,
                    beta: float) -> None:
    """Scoring only (prm.update=none): every micro-batch of this rank's plan through the fused head."""
    with evaluating(models.prm, models.ref):
        for rows in plan:
            record.add(rows, fused_head_scores(models.prm, models.ref, batch, rows, beta=beta))
