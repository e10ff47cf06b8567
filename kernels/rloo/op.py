"""Public `rloo_advantages`: the full PRIME advantage on device (prime_spec 3.3, 7.1-7.4).

Legend: B response rows = G prompt groups x K contiguous rows, T response positions.

Triton path (CUDA, or CPU tensors under TRITON_INTERPRET=1), three launches and no host sync:
  1. rloo_row_stats_kernel  per row: masked reward sum, valid count, max |reverse cumsum| (for batch_norm)
  2. (torch, on [B] vectors) batch_norm scalar, per-response means, group leave-one-out shifts, outcome RLOO
  3. rloo_returns_kernel    per row: x_t = scale*r_t - shift, discounted reverse scans of the process and
                            outcome sources, returns written, per-row (mean, M2) of the valid returns
  4. (torch, on [B]) global mean and unbiased variance by Chan's merge; whiten_kernel in place.
Torch path (CPU): the same decomposition with torch ops; one discounted scan when both gammas are equal
(the outcome is added at the last token first), and a chunked scan for gamma != 1 (a [C, C] matmul of
gamma powers inside chunks, a carry across chunks) instead of the reference's loop over T: at
B=256, T=1024, gamma=0.95 that loop took ~0.44 s here (bench/bench_rloo_losses.py).
"""

from __future__ import annotations

import torch

from .._backend import Backend, triton_or_torch
from .._library import qualified
from .._rl_validate import validate_rloo_args
from . import ref
from .ref import BATCH_NORM_EPS, WHITEN_EPS

# Positions per tile of the per-row loops: 1024 fp32 = 8 per thread at 4 warps, and a 3k-token response
# takes 3 tiles. Compiled for sm_80/sm_90 (kernels/_rl_static_specs.py): 39-106 registers, no spills,
# 128-bit global loads.
MAX_BLOCK_T = 1024


def rloo_advantages_backend(token_rewards: torch.Tensor) -> Backend:
    """ "triton" or "torch": the implementation `rloo_advantages` runs for tensors on this device."""
    return triton_or_torch(token_rewards)


def rloo_advantages(
    token_rewards: torch.Tensor,
    outcome: torch.Tensor,
    mask: torch.Tensor,
    *,
    group_size: int,
    gamma_process: float = 1.0,
    gamma_outcome: float = 1.0,
    reward_norm: str = "batch_norm",
    form: str = "prime",
    whiten: bool = True,
    process_coef: float = 1.0,
    outcome_coef: float = 1.0,
) -> torch.Tensor:
    """PRIME advantages from token-level implicit rewards and per-response outcome scores, fp32 [B, T].

    token_rewards: [B, T] any float dtype, the process reward of each response token (padding ignored).
    outcome: [B] real, the verifier score of each response. mask: [B, T] bool or 0/1, a prefix mask
    (1 up to and including EOS), at least one valid token per row. Rows [g*K, (g+1)*K) are the K = group_size
    responses of prompt g (contiguous, complete; K >= 2).

    1. reward_norm="batch_norm": r /= max over the batch of |sum_{s>=t} r_s| + 1e-6 ("none": unchanged).
    2. Leave-one-out per group, m_i = mean of r over row i's valid tokens, S = sum_i m_i:
       form="prime" (released code, spec 7.3): r_t*K/(K-1) - S/(K-1) on valid tokens;
       form="paper" (Eq. 5, spec 7.2):          r_t - (S - m_i)/(K-1).
       The outcome sits on the last valid token and gets the same transform there: o_i - mean_{j!=i} o_j.
    3. Discounted reverse cumsum per source (G_t = x_t + gamma*G_{t+1}, its own gamma), then
       returns = process_coef*G_process + outcome_coef*G_outcome (0 on padding).
    4. whiten: (returns - mu) / sqrt(var + 1e-8), mu and unbiased var over the valid tokens of the batch,
       applied to every position (padding too, as PRIME does; losses mask it out).
    NaN in a valid position propagates (through batch_norm's max to the whole batch, else to its group).
    """
    valid_BT = validate_rloo_args(
        token_rewards,
        outcome,
        mask,
        group_size=group_size,
        gamma_process=gamma_process,
        gamma_outcome=gamma_outcome,
        reward_norm=reward_norm,
        form=form,
        whiten=whiten,
        process_coef=process_coef,
        outcome_coef=outcome_coef,
    )
    return _rloo_advantages(token_rewards, outcome, valid_BT, group_size, float(gamma_process),
                            float(gamma_outcome), reward_norm, form, whiten, float(process_coef),
                            float(outcome_coef), rloo_advantages_backend(token_rewards) is Backend.TRITON)


@torch.library.custom_op(qualified("rloo_advantages"), mutates_args=())
def _rloo_advantages(token_rewards: torch.Tensor, outcome: torch.Tensor, valid_BT: torch.Tensor, group_size: int,
                     gamma_process: float, gamma_outcome: float, reward_norm: str, form: str, whiten: bool,
                     process_coef: float, outcome_coef: float, use_triton: bool) -> torch.Tensor:
    """The advantages fp32 [B, T] of validated inputs, by the Triton or the torch path."""
    path = rloo_advantages_triton if use_triton else rloo_advantages_torch
    return path(token_rewards, outcome, valid_BT, group_size=group_size, gamma_process=gamma_process,
                gamma_outcome=gamma_outcome, reward_norm=reward_norm, form=form, whiten=whiten,
                process_coef=process_coef, outcome_coef=outcome_coef)


@_rloo_advantages.register_fake
def _(token_rewards, outcome, valid_BT, group_size, gamma_process, gamma_outcome, reward_norm, form, whiten,
      process_coef, outcome_coef, use_triton):
    return token_rewards.new_empty(token_rewards.shape, dtype=torch.float32)


def _loo_coefficients(
    row_sum_B, count_B, absmax_B, outcome, *, group_size, reward_norm, form, process_coef, outcome_coef
):
    """Per-row (scale_B, shift_B, outc_B) on [B] vectors: the process reward of a valid token becomes
    scale_B*r_t - shift_B (batch_norm, leave-one-out and process_coef folded in) and the outcome part on
    the last valid token is outc_B (plain RLOO times outcome_coef). No host sync."""
    K = group_size
    B = row_sum_B.shape[0]
    if reward_norm == "batch_norm":
        norm = absmax_B.max() + BATCH_NORM_EPS  # torch's max propagates NaN
    else:
        norm = torch.ones((), dtype=torch.float32, device=row_sum_B.device)
    mean_B = row_sum_B / count_B / norm
    group_total_B = mean_B.view(-1, K).sum(-1).repeat_interleave(K)
    if form == "prime":
        scale_B = (process_coef * (K / (K - 1)) / norm).expand(B).contiguous()
        shift_B = process_coef * group_total_B / (K - 1)
    else:
        scale_B = (process_coef / norm).expand(B).contiguous()
        shift_B = process_coef * (group_total_B - mean_B) / (K - 1)
    o_B = outcome.float()
    outc_B = outcome_coef * (o_B * (K / (K - 1)) - o_B.view(-1, K).sum(-1).repeat_interleave(K) / (K - 1))
    return scale_B, shift_B.contiguous(), outc_B.contiguous()


def rloo_advantages_torch(
    token_rewards: torch.Tensor,
    outcome: torch.Tensor,
    valid_BT: torch.Tensor,
    *,
    group_size: int,
    gamma_process: float,
    gamma_outcome: float,
    reward_norm: str,
    form: str,
    whiten: bool,
    process_coef: float,
    outcome_coef: float,
) -> torch.Tensor:
    """The torch path on validated inputs (valid_BT: bool [B, T], a prefix mask)."""
    B, T = token_rewards.shape
    r_BT = torch.where(valid_BT, token_rewards.float(), 0.0)
    count_B = valid_BT.sum(-1, dtype=torch.float32)
    absmax_B = None
    if reward_norm == "batch_norm":
        revcum_BT = discounted_scan(r_BT, 1.0)
        row_sum_B, absmax_B = revcum_BT[:, 0], revcum_BT.abs().amax(-1)
    else:
        row_sum_B = r_BT.sum(-1)
    scale_B, shift_B, outc_B = _loo_coefficients(
        row_sum_B,
        count_B,
        absmax_B,
        outcome,
        group_size=group_size,
        reward_norm=reward_norm,
        form=form,
        process_coef=process_coef,
        outcome_coef=outcome_coef,
    )
    x_BT = torch.where(valid_BT, r_BT * scale_B[:, None] - shift_B[:, None], 0.0)
    last_B = count_B.long() - 1
    rows_B = torch.arange(B, device=x_BT.device)
    if gamma_process == gamma_outcome:
        x_BT[rows_B, last_B] += outc_B
        returns_BT = discounted_scan(x_BT, gamma_process)
    else:
        steps_BT = last_B[:, None] - torch.arange(T, device=x_BT.device)  # distance to the outcome token
        decay_BT = torch.pow(gamma_outcome, steps_BT.clamp(min=0).float())
        returns_BT = discounted_scan(x_BT, gamma_process) + outc_B[:, None] * decay_BT
    # Padding returns are 0 by definition (nothing valid follows); the chunked scan's matmul would spread
    # a NaN from an earlier position into them (0 * NaN), so pin them.
    returns_BT = torch.where(valid_BT, returns_BT, 0.0)
    if not whiten:
        return returns_BT
    return ref.masked_whiten(returns_BT, valid_BT)


def discounted_scan(x_BT: torch.Tensor, gamma: float, chunk: int = 64) -> torch.Tensor:
    """G_t = x_t + gamma*G_{t+1} along T, vectorized: inside chunks of C positions a matmul with
    W[s, t] = gamma^(s-t) (s >= t), then a carry from each chunk to the one before it (T/C steps)."""
    if gamma == 1.0:
        return x_BT.flip(-1).cumsum(-1).flip(-1)
    B, T = x_BT.shape
    C = min(chunk, T)
    n = -(-T // C)
    x_BNC = torch.nn.functional.pad(x_BT, (0, n * C - T)).view(B, n, C)  # zeros after T change nothing
    o_C = torch.arange(C, device=x_BT.device, dtype=torch.float64)
    gap_CC = o_C[:, None] - o_C[None, :]  # s - t
    w_CC = torch.where(gap_CC >= 0, gamma ** gap_CC.clamp(min=0), 0.0).float()
    local_BNC = x_BNC @ w_CC
    carry_decay_C = (gamma ** (C - o_C)).float()  # G_t gets gamma^(C-t) * G at the next chunk's start
    out_BNC = torch.empty_like(local_BNC)
    carry_B = torch.zeros(B, dtype=x_BT.dtype, device=x_BT.device)
    for j in reversed(range(n)):
        out_BNC[:, j] = local_BNC[:, j] + carry_decay_C * carry_B[:, None]
        carry_B = out_BNC[:, j, 0]
    return out_BNC.view(B, n * C)[:, :T]


def rloo_advantages_triton(
    token_rewards: torch.Tensor,
    outcome: torch.Tensor,
    valid_BT: torch.Tensor,
    *,
    group_size: int,
    gamma_process: float,
    gamma_outcome: float,
    reward_norm: str,
    form: str,
    whiten: bool,
    process_coef: float,
    outcome_coef: float,
) -> torch.Tensor:
    """The Triton path on validated inputs (valid_BT: bool [B, T])."""
    import triton

    from .kernel import rloo_returns_kernel, rloo_row_stats_kernel, whiten_kernel

    K = group_size
    B, T = token_rewards.shape
    r_BT = token_rewards.contiguous()
    m_BT = valid_BT.contiguous().view(torch.uint8)
    BT = min(MAX_BLOCK_T, max(16, triton.next_power_of_2(T)))
    dev = r_BT.device
    f32 = dict(dtype=torch.float32, device=dev)

    row_sum_B, count_B, absmax_B = (torch.empty(B, **f32) for _ in range(3))
    rloo_row_stats_kernel[(B,)](
        r_BT,
        m_BT,
        row_sum_B,
        count_B,
        absmax_B,
        T,
        r_BT.stride(0),
        m_BT.stride(0),
        BT=BT,
        NORM=reward_norm == "batch_norm",
    )

    scale_B, shift_B, outc_B = _loo_coefficients(
        row_sum_B,
        count_B,
        absmax_B,
        outcome,
        group_size=K,
        reward_norm=reward_norm,
        form=form,
        process_coef=process_coef,
        outcome_coef=outcome_coef,
    )

    out_BT = torch.empty(B, T, **f32)
    row_mean_B, row_m2_B = torch.empty(B, **f32), torch.empty(B, **f32)
    rloo_returns_kernel[(B,)](
        r_BT,
        m_BT,
        scale_B,
        shift_B,
        outc_B,
        count_B,
        out_BT,
        row_mean_B,
        row_m2_B,
        T,
        r_BT.stride(0),
        m_BT.stride(0),
        out_BT.stride(0),
        gamma_process,
        gamma_outcome,
        BT=BT,
        GAMMA_P_ONE=gamma_process == 1.0,
        GAMMA_O_ONE=gamma_outcome == 1.0,
    )
    if not whiten:
        return out_BT

    # Chan's merge of the per-row (n, mean, M2): global mean and unbiased variance of the valid returns
    # (in float64: [B] vectors, and counts past 2^24 tokens stay exact).
    n_B, mean_B = count_B.double(), row_mean_B.double()
    n = n_B.sum()
    mu = (n_B * mean_B).sum() / n
    m2 = row_m2_B.double().sum() + (n_B * (mean_B - mu) ** 2).sum()
    inv_std = torch.rsqrt(m2 / (n - 1) + WHITEN_EPS).float()
    mu = mu.float()
    BLOCK = 1024
    whiten_kernel[(triton.cdiv(B * T, BLOCK),)](out_BT, mu.reshape(1), inv_std.reshape(1), B * T, BLOCK=BLOCK)
    return out_BT
