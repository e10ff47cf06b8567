"""The vocab-split forwards of prime_token_rewards / linear_prime_rewards, from per-model softmax pieces.

Vocab-split (TP = 1, `split_forward`): a vocabulary wider than one split (linear_logprob.triton_op's
COLS_PER_SPLIT columns) is not streamed whole by one program per row tile (kernel.py): each model's pieces come
from linear_token_logprobs' vocab-split stats kernel (grid row tiles x fixed-width splits in the grouped,
L2-aware order, then the fixed-order merge), and the log-probs, rewards and per-sequence sums are formed in
torch from those pieces as below. The split width is fixed, so a row's outputs do not depend on its batch.
Why: one program per 64 rows streaming three models' full vocabularies fills at most N/64 SMs and re-reads
the weights from HBM per wave (kernels/traffic_model.py at the 7B head: ~422 GB vs ~31 GB split and grouped).

Vocab-parallel (tp_group): the forward of `linear_prime_rewards`: each TP rank reduces its vocabulary shard of the PRM
and of the reference to per-row fp32 pieces (max, log-sum-exp below it, z_label or 0), ONE all-gather carries
both models' pieces packed into one [N, 6] tensor (vocab_parallel.all_gather_pieces), and every rank merges
them locally in rank order (vocab_parallel.merge_pieces), so all ranks hold bitwise-identical pieces.

The log-probs, the rewards and the per-sequence sums are then formed from the merged pieces in torch (not in
the Triton kernel of the TP = 1 path, which streams a row's whole vocabulary in one program), with the
kernel's formula and grouping: reward = beta * (((z_prm - m_prm) - (z_ref - m_ref)) - (ls_prm - ls_ref)),
0 where masked. The shard pieces come from linear_token_logprobs' stats kernels (Triton, vocab-split) or its
chunked CPU twin, and for a reference given as logits from token_logprobs' (kernels/logprob).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist

from .._library import absent
from ..linear_logprob import custom_ops as linear_ops
from ..logprob import custom_ops as logits_ops
from ..vocab_parallel import all_gather_pieces, merge_pieces
from .segments import segmented_total, sequence_ids
from .types import ModelInput


class RowPieces(NamedTuple):
    """One model's softmax pieces per row, fp32 [N] each: max, log sum exp(z - max), z_label."""

    m_N: torch.Tensor
    ls_N: torch.Tensor
    zt_N: torch.Tensor

    def logp(self) -> torch.Tensor:
        return (self.zt_N - self.m_N) - self.ls_N  # never zt - (m + ls): see vocab_parallel.merge_pieces


def shard_pieces(model: ModelInput, labels_local_N: torch.Tensor, use_triton: bool) -> RowPieces:
    """This rank's shard of one model; labels_local_N holds -1 where the label lies on another shard (z 0)."""
    if isinstance(model, torch.Tensor):
        m_N, ls_N, _, zt_N = logits_ops.token_stats(model, labels_local_N, 1.0, False,
                                                    "triton" if use_triton else "torch")
    else:
        m_N, ls_N, _, zt_N = linear_ops.linear_stats(model[0], model[1], labels_local_N, 1.0, False,
                                                     "triton" if use_triton else "cpu")
    return RowPieces(m_N, ls_N, zt_N)


def merged_pieces(prm: ModelInput, ref: ModelInput, labels_local_N: torch.Tensor, use_triton: bool,
                  tp_group: dist.ProcessGroup) -> tuple[RowPieces, RowPieces]:
    """Both models' global pieces: shard pieces, the one all-gather, the local merge."""
    prm_s, ref_s = shard_pieces(prm, labels_local_N, use_triton), shard_pieces(ref, labels_local_N, use_triton)
    gathered_WN6 = all_gather_pieces([*prm_s, *ref_s], tp_group)
    out = []
    for base in (0, 3):
        m_N, ls_N, _, zt_N = merge_pieces(gathered_WN6[:, :, base], gathered_WN6[:, :, base + 1], None,
                                          gathered_WN6[:, :, base + 2])
        out.append(RowPieces(m_N, ls_N, zt_N))
    return out[0], out[1]


def rewards(prm: RowPieces, ref: RowPieces, beta: float, mask_N: torch.Tensor | None) -> torch.Tensor:
    """fp32 [N], the grouping of kernel.py's _rewards_tile (z - m is exact near the max), 0 where masked
    (torch.where: a masked token's NaN stays out)."""
    reward_N = beta * (((prm.zt_N - prm.m_N) - (ref.zt_N - ref.m_N)) - (prm.ls_N - ref.ls_N))
    if mask_N is not None:
        reward_N = torch.where(mask_N != 0, reward_N, torch.zeros_like(reward_N))
    return reward_N


def sequence_sums(reward_N: torch.Tensor, mask_N: torch.Tensor | None, seq_N: torch.Tensor,
                  cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum fp32 [S] of the (masked) rewards, count int64 [S] of mask != 0 tokens) per sequence.

    The sums are segments.segmented_total's fixed-order scan (deterministic on every device, no sync), read at each
    sequence's last row; empty sequences get 0. Counts are exact integer prefix sums."""
    cu = cu_seqlens.to(torch.int64)
    n_rows = reward_N.shape[0]
    valid_N = torch.ones_like(seq_N) if mask_N is None else (mask_N != 0).to(torch.int64)
    csum = torch.cat([valid_N.new_zeros(1), valid_N.cumsum(0)])
    seq_cnt = csum[cu[1:]] - csum[cu[:-1]]
    if n_rows == 0:
        return reward_N.new_zeros(cu.shape[0] - 1), seq_cnt
    total_N = segmented_total(reward_N, seq_N)
    has = cu[1:] > cu[:-1]
    seq_sum = torch.where(has, total_N[(cu[1:] - 1).clamp(min=0)], 0.0)
    return seq_sum, seq_cnt


def split_forward(labels_N: torch.Tensor, prm: ModelInput, ref: ModelInput, policy: ModelInput | None,
                  beta: float, mask_N: torch.Tensor | None, cu_seqlens: torch.Tensor | None):
    """The TP = 1 vocab-split path (module docstring), with op.py's outputs: (logp fp32 [5, N]: policy (0
    without one), PRM, reference log-probs, the PRM's max and log-sum-exp below it; reward [N]; and with
    cu_seqlens the per-sequence sums [S] and counts [S])."""
    prm_p, ref_p = shard_pieces(prm, labels_N, True), shard_pieces(ref, labels_N, True)
    reward_N = rewards(prm_p, ref_p, beta, mask_N)
    policy_logp_N = torch.zeros_like(reward_N) if policy is None else shard_pieces(policy, labels_N, True).logp()
    logp_5N = torch.stack((policy_logp_N, prm_p.logp(), ref_p.logp(), prm_p.m_N, prm_p.ls_N))
    if cu_seqlens is None:
        return logp_5N, reward_N, absent(reward_N), reward_N.new_empty(0, dtype=torch.int64)
    seq_N = sequence_ids(cu_seqlens, labels_N.shape[0])
    seq_sum_S, seq_cnt_S = sequence_sums(reward_N, mask_N, seq_N, cu_seqlens)
    return logp_5N, reward_N, seq_sum_S, seq_cnt_S
