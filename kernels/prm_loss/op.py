"""Public `prm_ce_loss`: the implicit PRM's BCE on its summed log-ratio (prime_spec 4.1).

Legend: B response rows, T positions.

Forward: one pass over prm_logp/ref_logp/mask for the per-row sums (Triton on CUDA / under
TRITON_INTERPRET=1, torch on CPU), then the [B]-sized BCE in torch. Backward: one write of the
per-row constant beta*(sigmoid(R_b) - o_b)/B * grad_output on the valid tokens. Only prm_logp gets a
gradient: ref_logp and outcome are treated as constants even if they require grad (spec: gradients
flow only through log pi_phi).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .._backend import Backend, triton_or_torch
from .._library import qualified
from .._rl_validate import validate_prm_ce_args

# Positions per program: a whole 2k-token row in one tile; grid (T tiles, B) keeps short micro-batches wide.
MAX_BLOCK_T = 2048


def prm_ce_loss_backend(prm_logp: torch.Tensor) -> Backend:
    """ "triton" or "torch": the implementation `prm_ce_loss` runs for tensors on this device."""
    return triton_or_torch(prm_logp)


def prm_ce_loss(
    prm_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    outcome: torch.Tensor,
    *,
    beta: float,
) -> torch.Tensor:
    """mean_b BCE(sigmoid(R_b), o_b), R_b = beta * sum_{t valid} (prm_logp - ref_logp); 0-d fp32.

    prm_logp, ref_logp: [B, T] any float dtype (per-token log-probs of the PRM and the reference);
    mask: [B, T] bool or 0/1 (padding ignored); outcome: [B] soft labels in [0, 1]; beta > 0.
    Computed as -(o*logsigmoid(R) + (1-o)*logsigmoid(-R)): finite for any R. At initialization
    (prm == ref) the loss is ln 2.
    """
    valid_BT = validate_prm_ce_args(prm_logp, ref_logp, mask, outcome, beta=beta)
    use_triton = prm_ce_loss_backend(prm_logp) is Backend.TRITON
    return _PRMCELoss.apply(prm_logp, ref_logp.detach(), valid_BT, outcome.detach(), float(beta), use_triton)


def prm_ce_terms(reward_B: torch.Tensor, outcome_B: torch.Tensor) -> torch.Tensor:
    """fp32 [B]: BCE(sigmoid(R_b), o_b) per response, -(o log sigmoid(R) + (1 - o) log sigmoid(-R)), finite
    for any R; torch autograd in R. The terms prm_ce_loss averages, for callers whose R_b come from elsewhere
    (linear_prime_rewards' per-sequence reward sums); the outcome is a constant."""
    o_B = outcome_B.detach().float()
    return -(o_B * F.logsigmoid(reward_B) + (1.0 - o_B) * F.logsigmoid(-reward_B))


class _PRMCELoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, prm_logp, ref_logp, valid_BT, outcome, beta, use_triton):
        row_sum_B = prm_logratio_row_sums(prm_logp, ref_logp, valid_BT, use_triton)
        reward_B = beta * row_sum_B
        o_B = outcome.float()
        loss = prm_ce_terms(reward_B, o_B).mean()
        # d loss / d R_b = (sigmoid(R_b) - o_b) / B; d R_b / d prm_logp[b, t] = beta on valid tokens.
        coef_B = beta * (torch.sigmoid(reward_B) - o_B) / reward_B.shape[0]
        ctx.save_for_backward(valid_BT, coef_B)
        ctx.prm_dtype = prm_logp.dtype
        ctx.use_triton = use_triton
        return loss

    @staticmethod
    @once_differentiable  # built from saved constants (per-row coefficients): no double backward
    def backward(ctx, grad_loss):
        valid_BT, coef_B = ctx.saved_tensors
        grad = prm_ce_grad(valid_BT, (coef_B * grad_loss).contiguous(), ctx.use_triton)
        return grad.to(ctx.prm_dtype), None, None, None, None, None


@torch.library.custom_op(qualified("prm_logratio_row_sums"), mutates_args=())
def prm_logratio_row_sums(prm_logp: torch.Tensor, ref_logp: torch.Tensor, valid_BT: torch.Tensor,
                          use_triton: bool) -> torch.Tensor:
    """sum over valid t of (prm_logp - ref_logp) per row, fp32 [B]."""
    return (_row_sums_triton if use_triton else _row_sums_torch)(prm_logp, ref_logp, valid_BT)


@prm_logratio_row_sums.register_fake
def _(prm_logp, ref_logp, valid_BT, use_triton):
    return prm_logp.new_empty(prm_logp.shape[0], dtype=torch.float32)


@torch.library.custom_op(qualified("prm_ce_grad"), mutates_args=())
def prm_ce_grad(valid_BT: torch.Tensor, coef_B: torch.Tensor, use_triton: bool) -> torch.Tensor:
    """d(loss)/d(prm_logp) fp32 [B, T]: the row's coefficient on its valid tokens, 0 elsewhere."""
    if use_triton:
        return _grad_triton(valid_BT, coef_B)
    return torch.where(valid_BT, coef_B[:, None], 0.0)


@prm_ce_grad.register_fake
def _(valid_BT, coef_B, use_triton):
    return coef_B.new_empty(valid_BT.shape, dtype=torch.float32)


def _row_sums_torch(prm_logp, ref_logp, valid_BT):
    return torch.where(valid_BT, prm_logp.float() - ref_logp.float(), 0.0).sum(-1)


def _block_t(T: int) -> int:
    import triton

    return min(MAX_BLOCK_T, max(16, triton.next_power_of_2(T)))


def _row_sums_triton(prm_logp, ref_logp, valid_BT):
    import triton

    from .kernel import prm_logratio_sum_kernel

    B, T = prm_logp.shape
    prm, ref = prm_logp.contiguous(), ref_logp.contiguous()
    m = valid_BT.contiguous().view(torch.uint8)
    BT = _block_t(T)
    n_tiles = triton.cdiv(T, BT)
    part = torch.empty(B, n_tiles, dtype=torch.float32, device=prm.device)
    prm_logratio_sum_kernel[(n_tiles, B)](
        prm, ref, m, part, T, n_tiles, prm.stride(0), ref.stride(0), m.stride(0), BT=BT
    )
    return part.sum(-1)


def _grad_triton(valid_BT, coef_B):
    import triton

    from .kernel import prm_grad_kernel

    B, T = valid_BT.shape
    m = valid_BT.contiguous().view(torch.uint8)
    # fp32 out, cast by torch (the caller): Triton 3.9's interpreter truncates fp32->bf16 stores (even with
    # fp_downcast_rounding="rtne"), which would break the bf16 tests; log-probs are fp32 in practice anyway.
    grad = torch.empty(B, T, dtype=torch.float32, device=valid_BT.device)
    BT = _block_t(T)
    prm_grad_kernel[(triton.cdiv(T, BT), B)](m, coef_B, grad, T, m.stride(0), grad.stride(0), BT=BT)
    return grad
