"""Public `prime_token_rewards` on CUDA / under TRITON_INTERPRET=1: ONE Triton launch for all models when the
vocabulary fits one split (kernel.py), else each model's vocab-split stats launch (fixed-width splits, grouped
order) and the rewards formed in torch from the merged fp32 pieces (sharded.split_forward). On CPU: the chunked
PyTorch path (bounded memory, same fp32 pieces). Scoring only: outputs carry no grad
(train the PRM through `linear_prime_rewards`, function.py, the policy through `linear_token_logprobs`).

Per-sequence sums (`cu_seqlens`): sequences are given as contiguous row ranges, as in packed/varlen
batches (flash-attn's and Megatron's PackedSeqParams' `cu_seqlens`), rather than as a per-token id:
  * it states S and empty sequences without reading device memory (S = len - 1), where with ids a
    trailing empty sequence is invisible and S needs a max() (a sync) or a second argument;
  * contiguity holds by construction, and the deterministic in-launch reduction relies on it (a tile
    touches a contiguous range of sequences; see kernel.py), where ids would need a sortedness check;
  * the padded [B, T] layout rloo_advantages uses is cu_seqlens = arange(B + 1) * T with the [B, T] mask.
The Triton path turns it into one int32 sequence id per row (sequence_ids: torch.searchsorted, no sync) for
the kernel, which writes per-tile partials; `_finish_seq_sums` adds them in a fixed order. The CPU path sums
the masked rewards per sequence with torch.segment_reduce (sequential per sequence)."""

from __future__ import annotations

import torch
import triton

from .._backend import Backend, triton_or_torch
from .._library import absent, qualified
from ..linear_logprob import cpu as linear_cpu
from ..linear_logprob.triton_op import _dot_fp32, tile_config
from ..logprob import torch_op as logits_cpu
from . import kernel, sharded
from .segments import segmented_total, sequence_ids
from .types import ModelInput, PrimeLogprobs, check_prime_inputs

# What both paths return: (fp32 [5, N]: the log-probs in the order policy (0 without one), PRM, reference,
# then the PRM's max and log-sum-exp below it (what linear_prime_rewards' backward needs); reward fp32 [N];
# seq_reward_sum fp32 [S]; seq_valid_count int64 [S]), the last two [0] without cu_seqlens.
# One [5, N] buffer rather than five outputs: the kernel writes it as one, and a custom op's outputs must not
# be views of each other.
Pieces = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def prime_token_rewards_backend(labels: torch.Tensor) -> Backend:
    """TRITON on CUDA / under TRITON_INTERPRET=1, else TORCH (the chunked PyTorch path)."""
    return triton_or_torch(labels)


def row_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _slot_args(model: ModelInput | None, like: torch.Tensor) -> tuple[list, int, bool]:
    """(pointer/size/stride args, KIND, DOT_FP32) of one model slot in prime_rewards_kernel."""
    if model is None:
        return [like, like, 0, 0, 0, 0], 0, True
    if isinstance(model, torch.Tensor):
        logits = row_contiguous(model)
        return [logits, logits, logits.shape[1], 0, logits.stride(0), 0], 1, True
    hidden, weight = row_contiguous(model[0]), row_contiguous(model[1])
    args = [hidden, weight, weight.shape[0], hidden.shape[1], hidden.stride(0), weight.stride(0)]
    return args, 2, _dot_fp32(hidden.dtype)


def _finish_seq_sums(head_sum, head_cnt, start_sum, start_cnt, seq_N, cu_seqlens, block_n):
    """(sum fp32 [S], count int64 [S]) = start[s] + the head[] partials of the tiles whose first row lies
    in sequence s (tiles ceil(a/BLOCK_N) .. ceil(b/BLOCK_N) - 1 for rows [a, b): contiguous, and every tile
    belongs to exactly one sequence)."""
    n_tiles = head_sum.shape[0]
    if n_tiles == 0:  # no rows: every sequence is empty
        return start_sum, start_cnt.to(torch.int64)
    tile_seq = seq_N[::block_n][:n_tiles]
    tot_sum = segmented_total(head_sum, tile_seq)
    tot_cnt = segmented_total(head_cnt.to(torch.int64), tile_seq)
    cu = cu_seqlens.to(torch.int64)
    t_lo = (cu[:-1] + block_n - 1) // block_n
    t_hi = (cu[1:] + block_n - 1) // block_n
    has = t_hi > t_lo
    last = (t_hi - 1).clamp(min=0)
    seq_sum = start_sum + torch.where(has, tot_sum[last], 0.0)
    seq_cnt = start_cnt.to(torch.int64) + torch.where(has, tot_cnt[last], 0)
    return seq_sum, seq_cnt


def model_vocab_size(model: ModelInput) -> int:
    return model.shape[1] if isinstance(model, torch.Tensor) else model[1].shape[0]


def uses_vocab_splits(prm: ModelInput, device: torch.device) -> bool:
    """Whether the Triton path splits the vocabulary (sharded.split_forward): when it is wider than one split
    of linear_token_logprobs' stats kernel. A function of V alone, so a row's outputs never depend on N."""
    return model_vocab_size(prm) > tile_config(device)["COLS_PER_SPLIT"]


def _triton(labels, prm, ref, policy, beta, mask, cu_seqlens) -> Pieces:
    if uses_vocab_splits(prm, labels.device):
        return sharded.split_forward(labels, prm, ref, policy, beta, mask, cu_seqlens)
    n_rows = labels.shape[0]
    dev = labels.device
    logp_5N = torch.zeros((5, n_rows), dtype=torch.float32, device=dev)
    reward_N = torch.empty(n_rows, dtype=torch.float32, device=dev)
    mask_N = (mask != 0).to(torch.int8) if mask is not None else labels
    cfg = tile_config(dev)
    pol, pol_kind, pol_f32 = _slot_args(policy, labels)
    prm_a, prm_kind, prm_f32 = _slot_args(prm, labels)
    ref_a, ref_kind, ref_f32 = _slot_args(ref, labels)
    models = [*pol, *prm_a, *ref_a, n_rows, float(beta)]
    meta = dict(POL_KIND=pol_kind, PRM_KIND=prm_kind, REF_KIND=ref_kind, HAS_MASK=mask is not None,
                BLOCK_N=cfg["BLOCK_N"], BLOCK_V=cfg["BLOCK_V"], BLOCK_H=cfg["BLOCK_H"],
                POL_DOT_FP32=pol_f32, PRM_DOT_FP32=prm_f32, REF_DOT_FP32=ref_f32, num_warps=cfg["num_warps"])
    n_tiles = triton.cdiv(n_rows, cfg["BLOCK_N"])
    if cu_seqlens is None:
        if n_rows:
            kernel.prime_rewards_kernel[(n_tiles,)](labels, mask_N, logp_5N, reward_N, *models, **meta)
        return logp_5N, reward_N, absent(reward_N), reward_N.new_empty(0, dtype=torch.int64)
    n_seqs = cu_seqlens.shape[0] - 1
    seq_N = sequence_ids(cu_seqlens, n_rows)
    head_sum = torch.zeros(n_tiles, dtype=torch.float32, device=dev)
    head_cnt = torch.zeros(n_tiles, dtype=torch.int32, device=dev)
    start_sum = torch.zeros(n_seqs, dtype=torch.float32, device=dev)
    start_cnt = torch.zeros(n_seqs, dtype=torch.int32, device=dev)
    if n_rows:
        kernel.prime_rewards_seq_kernel[(n_tiles,)](labels, mask_N, logp_5N, reward_N, seq_N.to(torch.int32),
                                             head_sum, head_cnt, start_sum, start_cnt, *models, **meta)
    seq_sum, seq_cnt = _finish_seq_sums(head_sum, head_cnt, start_sum, start_cnt, seq_N, cu_seqlens,
                                        cfg["BLOCK_N"])
    return logp_5N, reward_N, seq_sum, seq_cnt


def _cpu_pieces(model: ModelInput, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z_label, max, log sum exp(z - max)) fp32 [N] in bounded memory."""
    if isinstance(model, torch.Tensor):
        m_N, ls_N, _, zt_N = logits_cpu.token_stats(model, labels, 1.0, False)
    else:
        m_N, ls_N, _, zt_N = linear_cpu.linear_stats(model[0], model[1], labels, 1.0, False)
    return zt_N, m_N, ls_N


def _cpu_seq_sums(reward_N: torch.Tensor, mask: torch.Tensor | None,
                  cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum fp32 [S], count int64 [S]) of the (already masked) rewards: sequential per sequence."""
    cu = cu_seqlens.to(torch.int64)
    lengths = cu.diff()
    if reward_N.numel():
        seq_sum = torch.segment_reduce(reward_N, "sum", lengths=lengths, initial=0.0)
    else:
        seq_sum = torch.zeros(lengths.shape[0], dtype=torch.float32, device=reward_N.device)
    if mask is not None:
        valid = (mask != 0).to(torch.int64)
    else:
        valid = torch.ones(reward_N.shape[0], dtype=torch.int64, device=reward_N.device)
    csum = torch.cat([valid.new_zeros(1), valid.cumsum(0)])
    return seq_sum, csum[cu[1:]] - csum[cu[:-1]]


def _cpu(labels, prm, ref, policy, beta, mask, cu_seqlens) -> Pieces:
    zt_prm, m_prm, ls_prm = _cpu_pieces(prm, labels)
    zt_ref, m_ref, ls_ref = _cpu_pieces(ref, labels)
    reward_N = beta * (((zt_prm - m_prm) - (zt_ref - m_ref)) - (ls_prm - ls_ref))  # grouping: see kernel.py
    if mask is not None:
        reward_N = torch.where(mask != 0, reward_N, torch.zeros_like(reward_N))
    policy_logp = torch.zeros_like(reward_N)
    if policy is not None:
        zt_pol, m_pol, ls_pol = _cpu_pieces(policy, labels)
        policy_logp = (zt_pol - m_pol) - ls_pol
    logp_5N = torch.stack((policy_logp, (zt_prm - m_prm) - ls_prm, (zt_ref - m_ref) - ls_ref, m_prm, ls_prm))
    if cu_seqlens is None:
        return logp_5N, reward_N, absent(reward_N), reward_N.new_empty(0, dtype=torch.int64)
    seq_sum, seq_cnt = _cpu_seq_sums(reward_N, mask, cu_seqlens)
    return logp_5N, reward_N, seq_sum, seq_cnt


def _model(first: torch.Tensor, weight: torch.Tensor | None) -> ModelInput:
    return first if weight is None else (first, weight)


@torch.library.custom_op(qualified("prime_token_rewards"), mutates_args=())
def _prime_token_rewards(labels: torch.Tensor, prm: torch.Tensor, prm_weight: torch.Tensor | None,
                         ref: torch.Tensor, ref_weight: torch.Tensor | None, policy: torch.Tensor | None,
                         policy_weight: torch.Tensor | None, beta: float, mask: torch.Tensor | None,
                         cu_seqlens: torch.Tensor | None, use_triton: bool) -> Pieces:
    """A model is its logits (weight None) or (hidden, weight); see `Pieces` for the outputs."""
    path = _triton if use_triton else _cpu
    return path(labels, _model(prm, prm_weight), _model(ref, ref_weight),
                None if policy is None else _model(policy, policy_weight), beta, mask, cu_seqlens)


@_prime_token_rewards.register_fake
def _(labels, prm, prm_weight, ref, ref_weight, policy, policy_weight, beta, mask, cu_seqlens, use_triton):
    n_rows = labels.shape[0]
    n_seqs = 0 if cu_seqlens is None else cu_seqlens.shape[0] - 1
    f32 = dict(dtype=torch.float32, device=labels.device)
    return (torch.empty(5, n_rows, **f32), torch.empty(n_rows, **f32), torch.empty(n_seqs, **f32),
            torch.empty(n_seqs, dtype=torch.int64, device=labels.device))


def _split(model: ModelInput) -> tuple[torch.Tensor, torch.Tensor | None]:
    return (model, None) if isinstance(model, torch.Tensor) else (model[0], model[1])


def prime_pieces(labels_N: torch.Tensor, prm: ModelInput, ref: ModelInput, policy: ModelInput | None,
                 beta: float, mask: torch.Tensor | None, cu_seqlens: torch.Tensor | None) -> Pieces:
    """The custom op on checked inputs (labels_N contiguous), on the path labels' device takes (`Pieces`)."""
    policy_args = (None, None) if policy is None else _split(policy)
    return _prime_token_rewards(labels_N, *_split(prm), *_split(ref), *policy_args, float(beta), mask, cu_seqlens,
                                prime_token_rewards_backend(labels_N) is Backend.TRITON)


@torch.no_grad()
def prime_token_rewards(labels: torch.Tensor, *, prm: ModelInput, ref: ModelInput,
                        policy: ModelInput | None = None, beta: float,
                        mask: torch.Tensor | None = None,
                        cu_seqlens: torch.Tensor | None = None) -> PrimeLogprobs:
    """Per-token log-probs of policy (optional), PRM and reference (each logits [N, V] or (hidden, weight))
    and reward = beta*((z_prm - z_ref) - (lse_prm - lse_ref)) formed from fp32 pieces, 0 where mask is 0.
    All outputs fp32 [N]. A NaN input propagates to the affected outputs (masked rewards are 0).

    cu_seqlens (optional, int32/int64 [S+1], 0 = cu[0] <= ... <= cu[S] = N): rows cu[s]:cu[s+1] are
    sequence s (e.g. arange(B + 1) * T for a flattened [B, T] batch). Then, in the same call,
    seq_reward_sum fp32 [S] = sum of the sequence's rewards over mask != 0 tokens and seq_valid_count
    int64 [S] = its number of such tokens, so the RLOO baseline's m_i = seq_reward_sum / seq_valid_count
    (before rloo_advantages' batch_norm, which divides every m_i by one scalar). Deterministic; a NaN reward
    on a valid token makes its own sequence's sum NaN only. The per-token outputs are bitwise the same with
    or without cu_seqlens; a sequence's sum is rounded differently depending on where its tile boundaries
    (or scan steps) fall, i.e. its offset in the batch, so, unlike the per-token outputs, it is not
    batch-invariant bitwise."""
    check_prime_inputs(labels, prm, ref, policy, beta, mask, cu_seqlens)
    logp_5N, reward_N, seq_sum, seq_cnt = prime_pieces(labels.contiguous(), prm, ref, policy, beta, mask,
                                                       cu_seqlens)
    policy_logp, prm_logp, ref_logp, _, _ = logp_5N.unbind()  # unbind, not [k]: select has no fake-CUDA kernel
    has_seqs = cu_seqlens is not None
    return PrimeLogprobs(policy_logp if policy is not None else None, prm_logp, ref_logp, reward_N,
                         seq_sum if has_seqs else None, seq_cnt if has_seqs else None)
