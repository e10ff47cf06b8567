"""Peer implementations that the benchmark suites time against primeflow, in one place so that
tests/bench/test_peers.py checks the exact function a suite times.

GPU-only libraries are imported lazily (inside the call), so importing this module costs nothing on a CPU
machine; the suites add a peer only where it can run (`liger_available()` and CUDA).
"""

from __future__ import annotations

import importlib.util

import torch


def liger_available() -> bool:
    """True when liger-kernel is installed (it is in the `gpu` and `dev` extras of setup.py)."""
    return importlib.util.find_spec("liger_kernel") is not None


def liger_linear_token_logprobs(hidden_NH: torch.Tensor, weight_VH: torch.Tensor,
                                labels_N: torch.Tensor) -> torch.Tensor:
    """log softmax(hidden @ weight.T)[label] per row, fp32 [N], through Liger's fused linear cross entropy
    (liger_kernel 0.8.5 `LigerFusedLinearCrossEntropyFunction`): with reduction="none" its per-token loss is
    -logp (fp32, no ignored labels since every label is a valid id). Differentiable w.r.t. hidden and weight:
    for reduction="none" Liger defers the gradient to backward and recomputes the chunked logits there
    (like primeflow), folding in the per-token upstream gradient. Liger materialises logits in chunks of
    about N*H elements (chunk_mem_const=1) in the input dtype, so its bf16 logits are rounded to bf16."""
    from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction

    # positional: (input, weight, target, bias, ce_weight, ignore_index, lse_square_scale, label_smoothing,
    # reduction); the function returns (loss, z_loss, token_accuracy, predicted_tokens)
    out = LigerFusedLinearCrossEntropyFunction.apply(hidden_NH, weight_VH, labels_N, None, None, -100, 0.0, 0.0,
                                                     "none")
    return -out[0]
