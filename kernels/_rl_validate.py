"""Argument checks for the RL ops on [B, T] response tensors (rloo, ppo_loss, prm_loss).

Every failure is a ValueError naming the argument and what is allowed. Checks that must read tensor values
(mask values, prefix masks, outcome range) are gathered on one ValueChecks per call and read back together:
one device-to-host copy per op call (kernels/_validate.py). They are skipped where values cannot be read
(fake tensors, torch.compile tracing: kernels/_library.py).
"""

from __future__ import annotations

import math

import torch

from ._library import values_readable
from ._validate import ValueChecks, check_value, require


def check_bt(name: str, tensor: torch.Tensor, shape: tuple[int, int] | None = None) -> None:
    """A floating-point [B, T] tensor (with the given shape when `shape` is set)."""
    require(isinstance(tensor, torch.Tensor), f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    require(tensor.dim() == 2, f"{name} must be 2-D [B, T], got shape {tuple(tensor.shape)}")
    require(tensor.is_floating_point(), f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")
    if shape is not None:
        require(
            tuple(tensor.shape) == shape,
            f"{name} must have shape [B, T] = {list(shape)}, got {list(tensor.shape)}",
        )


def check_same_device(reference: torch.Tensor, **tensors: torch.Tensor) -> None:
    for name, tensor in tensors.items():
        require(
            tensor.device == reference.device,
            f"{name} is on {tensor.device} but the other inputs are on {reference.device}",
        )


def check_mask(name: str, mask: torch.Tensor, shape: tuple[int, int], checks: ValueChecks | None = None
               ) -> torch.Tensor:
    """A 0/1 mask of `shape` (bool or any numeric dtype); returns it as bool. The value check is queued on
    `checks` when given, else read now."""
    require(isinstance(mask, torch.Tensor), f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    require(
        tuple(mask.shape) == shape, f"{name} must have shape [B, T] = {list(shape)}, got {list(mask.shape)}"
    )
    require(not mask.is_complex(), f"{name} must be bool or real-valued 0/1, got dtype {mask.dtype}")
    if mask.dtype == torch.bool:
        return mask
    if not values_readable(mask):
        return mask != 0
    check_value(checks, ((mask == 0) | (mask == 1)).all(), f"{name} must contain only 0 and 1 (or be bool)")
    return mask != 0


def check_outcome(name: str, outcome: torch.Tensor, batch: int, *, unit_interval: bool,
                  checks: ValueChecks | None = None) -> None:
    """Per-response scores [B], real-valued; with `unit_interval`, in [0, 1] (NaN passes: it propagates)."""
    require(isinstance(outcome, torch.Tensor), f"{name} must be a torch.Tensor, got {type(outcome).__name__}")
    require(
        tuple(outcome.shape) == (batch,),
        f"{name} must have shape [B] = [{batch}] (one score per response row), got {list(outcome.shape)}",
    )
    require(not outcome.is_complex(), f"{name} must be real-valued, got dtype {outcome.dtype}")
    if unit_interval and outcome.numel() and values_readable(outcome):
        bad = (outcome < 0) | (outcome > 1)  # NaN compares False: a NaN label propagates instead of raising
        check_value(checks, ~bad.any(), f"{name} must lie in [0, 1] (a soft BCE label), got values outside")


def check_prefix_mask(name: str, valid_BT: torch.Tensor, checks: ValueChecks | None = None) -> None:
    """Every row is 1..1 0..0 with at least one 1: the response mask of prime_spec section 2.

    Why it must hold for the advantage: the outcome sits on the *last valid* token, which PRIME locates as
    `mask.sum() - 1` (only right for a prefix mask), every row needs a position for it, and the per-response
    mean reward of the leave-one-out baseline divides by the row's valid count.
    """
    if not values_readable(valid_BT):
        return
    check_value(
        checks,
        valid_BT[:, 0].all(),
        f"{name}: every row needs at least one valid token at position 0 (responses are right-padded; "
        "an empty response has no token to carry its outcome)",
    )
    if valid_BT.shape[1] > 1:
        check_value(
            checks,
            ~(valid_BT[:, 1:] & ~valid_BT[:, :-1]).any(),
            f"{name} must be a prefix mask per row (1 up to and including the EOS token, 0 after it); "
            "found a valid token after a padding position",
        )


def check_group_size(group_size: int, batch: int) -> None:
    require(
        isinstance(group_size, int) and not isinstance(group_size, bool),
        f"group_size must be an int (responses per prompt, K), got {group_size!r}",
    )
    require(
        group_size >= 2,
        f"group_size must be >= 2, got {group_size}: RLOO's leave-one-out baseline averages the other K-1 "
        "responses of the prompt, so a group of one has no baseline (K-1 = 0)",
    )
    require(batch > 0, "the batch is empty (B = 0)")
    require(
        batch % group_size == 0,
        f"the batch size B={batch} must be a multiple of group_size={group_size}: rows of one prompt group "
        "must be contiguous and complete (rows [g*K, (g+1)*K) belong to prompt g)",
    )


def check_real(
    name: str, value: float, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False
) -> float:
    require(
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
        f"{name} must be a finite number, got {value!r}",
    )
    if lo is not None:
        ok = value > lo if lo_open else value >= lo
        require(ok, f"{name} must be {'>' if lo_open else '>='} {lo}, got {value}")
    if hi is not None:
        require(value <= hi, f"{name} must be <= {hi}, got {value}")
    return float(value)


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    require(value in allowed, f"{name} must be one of {list(allowed)}, got {value!r}")


def validate_rloo_args(
    token_rewards: torch.Tensor,
    outcome: torch.Tensor,
    mask: torch.Tensor,
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
    """All checks of `rloo_advantages`; returns the mask as bool [B, T].

    What must hold and why: rows of a group are contiguous and complete (B % K == 0, K >= 2: the baseline
    averages K-1 others); masks are prefix masks with >= 1 valid token per row (see check_prefix_mask);
    gammas are discount factors in [0, 1]; with whitening the batch has >= 2 valid tokens (always true once
    B >= K >= 2 rows each hold one), so the unbiased variance is defined.
    """
    check_bt("token_rewards", token_rewards)
    shape = tuple(token_rewards.shape)
    require(shape[1] > 0, "token_rewards has T = 0 positions; every response needs at least one token")
    checks = ValueChecks()  # the value checks below are read back together, once
    check_outcome("outcome", outcome, shape[0], unit_interval=False, checks=checks)
    check_same_device(token_rewards, outcome=outcome, mask=mask)
    check_group_size(group_size, shape[0])
    check_real("gamma_process", gamma_process, lo=0.0, hi=1.0)
    check_real("gamma_outcome", gamma_outcome, lo=0.0, hi=1.0)
    check_real("process_coef", process_coef)
    check_real("outcome_coef", outcome_coef)
    check_choice("reward_norm", reward_norm, ("batch_norm", "none"))
    check_choice("form", form, ("prime", "paper"))
    require(isinstance(whiten, bool), f"whiten must be a bool, got {whiten!r}")
    valid_BT = check_mask("mask", mask, shape, checks)
    check_prefix_mask("mask", valid_BT, checks)
    checks.run()
    return valid_BT


PPO_AGGREGATIONS = ("token-mean", "seq-mean-token-mean")


def validate_ppo_args(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: float,
    agg: str,
) -> torch.Tensor:
    """All checks of `ppo_clip_loss`; returns the mask as bool [B, T]."""
    check_bt("logp", logp)
    shape = tuple(logp.shape)
    check_bt("old_logp", old_logp, shape)
    check_bt("advantages", advantages, shape)
    check_same_device(logp, old_logp=old_logp, advantages=advantages, mask=mask)
    check_real("clip", clip, lo=0.0, lo_open=True)
    check_choice("agg", agg, PPO_AGGREGATIONS)
    return check_mask("mask", mask, shape)


def validate_prm_ce_args(
    prm_logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, outcome: torch.Tensor, *, beta: float
) -> torch.Tensor:
    """All checks of `prm_ce_loss`; returns the mask as bool [B, T]."""
    check_bt("prm_logp", prm_logp)
    shape = tuple(prm_logp.shape)
    check_bt("ref_logp", ref_logp, shape)
    checks = ValueChecks()  # one read-back for the outcome range and the mask values
    check_outcome("outcome", outcome, shape[0], unit_interval=True, checks=checks)
    check_same_device(prm_logp, ref_logp=ref_logp, mask=mask, outcome=outcome)
    check_real("beta", beta, lo=0.0, lo_open=True)
    require(shape[0] > 0, "prm_logp has B = 0 rows; the loss is a mean over responses")
    valid_BT = check_mask("mask", mask, shape, checks)
    checks.run()
    return valid_BT
