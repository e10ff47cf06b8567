"""Compile specs of the RL kernels (rloo, ppo_loss, prm_loss, prime_rewards_seq) for kernels/static_check.py.

Each dict holds the fields of static_check.KernelSpec (label, fn, signature, constexprs, divisible_by_16,
num_warps), at the configuration the launchers use on CUDA (MAX_BLOCK_T tiles, Triton's default 4 warps,
uint8 masks). Integer strides and pointers are declared divisible by 16 as the JIT specializes them at
realistic shapes (T a multiple of 16); use with `[KernelSpec(**d) for d in rl_kernel_specs()]`.
prime_rewards_seq_kernel (prime_token_rewards with cu_seqlens) is compiled at the fused-head GPU tiles of
linear_logprob.triton_op.tile_config, like prime_rewards_kernel in static_check.specs(). Only its logits
variant is listed in rl_kernel_specs(): that list is held to 128-bit global loads, which the
(hidden, weight) variant does not issue (its tiles arrive by 16-byte cp.async; the widest plain loads are
the labels, 64-bit) any more than prime_rewards_kernel's does. prime_seq_specs() has both; the
(hidden, weight) one is checked by tests/kernels/test_prime_seq_static_check.py.
"""

from __future__ import annotations

import torch

from .linear_logprob.triton_op import tile_config
from .ppo_loss import kernel as ppo_kernel
from .ppo_loss.op import MAX_BLOCK_T as PPO_BLOCK_T
from .prime_rewards import kernel as prime_kernel
from .prm_loss import kernel as prm_kernel
from .prm_loss.op import MAX_BLOCK_T as PRM_BLOCK_T
from .rloo import kernel as rloo_kernel
from .rloo.op import MAX_BLOCK_T as RLOO_BLOCK_T

NUM_WARPS = 4  # the launchers pass none: Triton's default
GPU_TILES = tile_config(torch.device("cuda"))  # the fused-head tiles the launchers use on CUDA


def _sig(fn, types: dict[str, str]) -> dict[str, str]:
    return {name: types.get(name, "constexpr") for name in fn.arg_names}


def _aligned(fn, exclude: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Every pointer and stride/length argument except the [B]-vector pointers indexed per row."""
    return tuple(
        n
        for n in fn.arg_names
        if (n.endswith("_ptr") or n.startswith("stride") or n == "T") and n not in exclude
    )


def rl_kernel_specs() -> list[dict]:
    out: list[dict] = []
    for dtype in ("fp32", "bf16"):
        fn = rloo_kernel.rloo_row_stats_kernel
        out.append(
            dict(
                label=f"rloo_row_stats[{dtype}]",
                fn=fn,
                signature=_sig(
                    fn,
                    {
                        "r_ptr": f"*{dtype}",
                        "m_ptr": "*u8",
                        "sum_ptr": "*fp32",
                        "count_ptr": "*fp32",
                        "absmax_ptr": "*fp32",
                        "T": "i32",
                        "stride_r": "i32",
                        "stride_m": "i32",
                    },
                ),
                constexprs={"BT": RLOO_BLOCK_T, "NORM": True},
                divisible_by_16=_aligned(fn),
                num_warps=NUM_WARPS,
            )
        )
        for gamma_one in (True, False):
            fn = rloo_kernel.rloo_returns_kernel
            out.append(
                dict(
                    label=f"rloo_returns[{dtype},gamma1={gamma_one}]",
                    fn=fn,
                    signature=_sig(
                        fn,
                        {
                            "r_ptr": f"*{dtype}",
                            "m_ptr": "*u8",
                            "scale_ptr": "*fp32",
                            "shift_ptr": "*fp32",
                            "outc_ptr": "*fp32",
                            "count_ptr": "*fp32",
                            "out_ptr": "*fp32",
                            "mean_ptr": "*fp32",
                            "m2_ptr": "*fp32",
                            "T": "i32",
                            "stride_r": "i32",
                            "stride_m": "i32",
                            "stride_o": "i32",
                            "gamma_p": "fp32",
                            "gamma_o": "fp32",
                        },
                    ),
                    constexprs={"BT": RLOO_BLOCK_T, "GAMMA_P_ONE": gamma_one, "GAMMA_O_ONE": gamma_one},
                    divisible_by_16=_aligned(fn),
                    num_warps=NUM_WARPS,
                )
            )
        fn = ppo_kernel.ppo_clip_fwd_kernel
        out.append(
            dict(
                label=f"ppo_clip_fwd[{dtype}]",
                fn=fn,
                signature=_sig(
                    fn,
                    {
                        "logp_ptr": f"*{dtype}",
                        "old_ptr": "*fp32",
                        "adv_ptr": "*fp32",
                        "m_ptr": "*u8",
                        "w_ptr": "*fp32",
                        "grad_ptr": "*fp32",
                        "part_ptr": "*fp32",
                        "T": "i32",
                        "n_tiles": "i32",
                        "stride_lp": "i32",
                        "stride_old": "i32",
                        "stride_adv": "i32",
                        "stride_m": "i32",
                        "stride_g": "i32",
                        "clip_lo": "fp32",
                        "clip_hi": "fp32",
                    },
                ),
                constexprs={"BT": PPO_BLOCK_T, "WRITE_GRAD": True},
                divisible_by_16=_aligned(fn),
                num_warps=NUM_WARPS,
            )
        )
        fn = prm_kernel.prm_logratio_sum_kernel
        out.append(
            dict(
                label=f"prm_logratio_sum[{dtype}]",
                fn=fn,
                signature=_sig(
                    fn,
                    {
                        "prm_ptr": f"*{dtype}",
                        "ref_ptr": f"*{dtype}",
                        "m_ptr": "*u8",
                        "part_ptr": "*fp32",
                        "T": "i32",
                        "n_tiles": "i32",
                        "stride_prm": "i32",
                        "stride_ref": "i32",
                        "stride_m": "i32",
                    },
                ),
                constexprs={"BT": PRM_BLOCK_T},
                divisible_by_16=_aligned(fn),
                num_warps=NUM_WARPS,
            )
        )
    fn = prm_kernel.prm_grad_kernel
    out.append(
        dict(
            label="prm_grad",
            fn=fn,
            signature=_sig(
                fn,
                {
                    "m_ptr": "*u8",
                    "coef_ptr": "*fp32",
                    "grad_ptr": "*fp32",
                    "T": "i32",
                    "stride_m": "i32",
                    "stride_g": "i32",
                },
            ),
            constexprs={"BT": PRM_BLOCK_T},
            divisible_by_16=_aligned(fn),
            num_warps=NUM_WARPS,
        )
    )
    fn = rloo_kernel.whiten_kernel
    out.append(
        dict(
            label="whiten",
            fn=fn,
            signature=_sig(
                fn, {"x_ptr": "*fp32", "mean_ptr": "*fp32", "inv_std_ptr": "*fp32", "numel": "i32"}
            ),
            constexprs={"BLOCK": 1024},
            divisible_by_16=("x_ptr", "numel"),
            num_warps=NUM_WARPS,
        )
    )
    out.extend(prime_seq_specs(kinds=(1,)))
    return out


def prime_seq_specs(kinds: tuple[int, ...] = (2, 1)) -> list[dict]:
    """prime_rewards_seq_kernel, bf16, with a mask, all three models as (hidden, weight) (kind 2) and/or all
    as logits (kind 1)."""
    fn = prime_kernel.prime_rewards_seq_kernel
    types = {"labels_ptr": "*i64", "mask_ptr": "*i8", "logp_ptr": "*fp32", "reward_ptr": "*fp32",
             "seq_ptr": "*i32", "head_sum_ptr": "*fp32", "head_cnt_ptr": "*i32", "start_sum_ptr": "*fp32",
             "start_cnt_ptr": "*i32", "N": "i32", "beta": "fp32"}
    for slot in ("pol", "prm", "ref"):
        types.update({f"{slot}_a": "*bf16", f"{slot}_w": "*bf16", f"{slot}_V": "i32", f"{slot}_H": "i32",
                      f"{slot}_sa": "i64", f"{slot}_sw": "i64"})
    aligned = tuple(f"{s}_{f}" for s in ("pol", "prm", "ref") for f in ("a", "w", "V", "H", "sa", "sw"))
    tiles = {k: GPU_TILES[k] for k in ("BLOCK_N", "BLOCK_V", "BLOCK_H")}
    out = []
    for kind in kinds:
        out.append(
            dict(
                label=f"prime_rewards[bf16,{'linear' if kind == 2 else 'logits'}x3,seq_sums]",
                fn=fn,
                signature=_sig(fn, types),
                constexprs={**tiles, "POL_KIND": kind, "PRM_KIND": kind, "REF_KIND": kind, "HAS_MASK": True,
                            "POL_DOT_FP32": False, "PRM_DOT_FP32": False, "REF_DOT_FP32": False},
                divisible_by_16=aligned,
                num_warps=GPU_TILES["num_warps"],
            )
        )
    return out
