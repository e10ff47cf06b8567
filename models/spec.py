"""The one place that chooses layer implementations for the Megatron GPTModel.

Layer: pre-RMSNorm -> SelfAttention(ColumnParallel fused QKV, core attention, RowParallel proj) -> residual
-> pre-RMSNorm -> MLP(ColumnParallel fused gate|up, SwiGLU, RowParallel down) -> residual. All Megatron-core
"local" modules (no Transformer Engine, no apex), so the same spec runs on CPU/gloo and on CUDA. On CUDA with
Transformer Engine installed, model.transformer_impl chooses megatron-core's TE spec instead
(models/transformer_impl.py).

Core attention is ours, not Megatron's `DotProductAttention`: that one allocates its score buffer with
`torch.cuda.current_device()` and materialises [b, heads, s, s] scores. `SDPAttention` calls
`torch.nn.functional.scaled_dot_product_attention` (fused kernels on CPU and CUDA) and supports packed
sequences (THD layout with cu_seqlens: several responses in one row, each attending only to itself).
`FlashVarlenAttention` is used on CUDA when `flash_attn` is installed.

Legend: s sequence, b batch, t packed tokens, n query heads (this TP rank), g KV groups (this rank), d head dim.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

from .transformer_impl import te_final_norm, te_layer_spec


class SDPAttention(MegatronModule):
    """Causal GQA attention via torch SDPA; drop-in for Megatron's core attention (same constructor and
    forward signature). Inputs: sbhd q [s, b, n, d], k/v [s, b, g, d]; or THD q [t, n, d], k/v [t, g, d]
    with `packed_seq_params.cu_seqlens_q`. Output [s, b, n*d] (or [t, n*d])."""

    def __init__(self, config: TransformerConfig, layer_number: int, attn_mask_type: AttnMaskType,
                 attention_type: str, attention_dropout: float | None = None,
                 softmax_scale: float | None = None, cp_comm_type: str | None = None, pg_collection=None):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("SDPAttention does not implement context parallelism (context_parallel_size=1)")
        if attn_mask_type not in (AttnMaskType.causal, AttnMaskType.padding_causal):
            raise ValueError(f"SDPAttention is causal only, got attn_mask_type={attn_mask_type}")
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(config.kv_channels)
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout

    def _attend(self, q_bnsd: torch.Tensor, k_bgsd: torch.Tensor, v_bgsd: torch.Tensor,
                mask_bnss: torch.Tensor | None) -> torch.Tensor:
        dropout = self.dropout_p if self.training else 0.0
        rep = q_bnsd.shape[1] // k_bgsd.shape[1]
        if rep > 1:  # GQA: each KV group serves `rep` consecutive query heads (Megatron's head order)
            k_bgsd = k_bgsd.repeat_interleave(rep, dim=1)
            v_bgsd = v_bgsd.repeat_interleave(rep, dim=1)
        if mask_bnss is None:
            return F.scaled_dot_product_attention(q_bnsd, k_bgsd, v_bgsd, dropout_p=dropout, is_causal=True,
                                                  scale=self.softmax_scale)
        return F.scaled_dot_product_attention(q_bnsd, k_bgsd, v_bgsd, attn_mask=mask_bnss, dropout_p=dropout,
                                              scale=self.softmax_scale)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, attn_mask_type: AttnMaskType | None = None,
                attention_bias: torch.Tensor | None = None,
                packed_seq_params: PackedSeqParams | None = None) -> torch.Tensor:
        if attention_bias is not None:
            raise ValueError("SDPAttention: attention_bias is not supported")
        if packed_seq_params is not None:
            return self._forward_thd(query, key, value, packed_seq_params)
        s, b, n, d = query.shape
        mask = None
        if attention_mask is not None:
            # Megatron convention: True = masked out, shape [b or 1, 1, s, s]. Combine with causality;
            # SDPA's boolean mask is the opposite (True = attend).
            causal_ss = torch.ones(s, s, dtype=torch.bool, device=query.device).tril()
            mask = causal_ss & ~attention_mask.to(torch.bool)
        out_bnsd = self._attend(query.permute(1, 2, 0, 3), key.permute(1, 2, 0, 3), value.permute(1, 2, 0, 3),
                                mask)
        return out_bnsd.permute(2, 0, 1, 3).reshape(s, b, n * d)

    def _forward_thd(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     params: PackedSeqParams) -> torch.Tensor:
        """Packed sequences -> one padded batch [seqs, heads, L_max, d] -> one SDPA call with a causal +
        key-padding mask -> back to packed rows. Work O(seqs * L_max^2); one kernel launch instead of one
        per sequence (per-sequence calls cost more in fixed overhead than in math for short RL sequences)."""
        cu = params.cu_seqlens_q_padded if params.cu_seqlens_q_padded is not None else params.cu_seqlens_q
        t, n, d = query.shape
        starts_S = cu[:-1].to(torch.int64)
        lens_S = (cu[1:] - cu[:-1]).to(torch.int64)
        keep = lens_S > 0
        starts_S, lens_S = starts_S[keep], lens_S[keep]
        if lens_S.numel() == 0:
            return torch.zeros(t, n * d, dtype=query.dtype, device=query.device)
        # the longest sequence: pack_rows states it on the host (no device read); padded cu_seqlens may be
        # longer than it, and a caller may not state it. (The zero-length filter above is a boolean index,
        # a device sync of its own on a GPU: this fp32 / CPU fallback keeps it; bf16 on CUDA is flash-attn's.)
        L = params.max_seqlen_q if params.cu_seqlens_q_padded is None and params.max_seqlen_q else int(lens_S.max())
        pos_L = torch.arange(L, device=query.device)
        valid_SL = pos_L[None, :] < lens_S[:, None].to(query.device)
        index_SL = torch.where(valid_SL, starts_S[:, None].to(query.device) + pos_L[None, :], 0)

        def padded(x: torch.Tensor) -> torch.Tensor:  # [t, h, d] -> [S, h, L, d]
            return x[index_SL].permute(0, 2, 1, 3)

        causal_LL = torch.ones(L, L, dtype=torch.bool, device=query.device).tril()
        mask_S1LL = (causal_LL[None, :, :] & valid_SL[:, None, :])[:, None]
        out_SnLd = self._attend(padded(query), padded(key), padded(value), mask_S1LL)
        out_tnd = torch.zeros_like(query).index_put((index_SL[valid_SL],), out_SnLd.permute(0, 2, 1, 3)[valid_SL])
        return out_tnd.reshape(t, n * d)


class RMSNorm:
    """torch.nn.RMSNorm built from Megatron's (config, hidden_size, eps) arguments, like Megatron's
    WrappedTorchNorm, but one that accepts sequence parallelism (WrappedTorchNorm asserts against it). Under
    sequence parallelism each TP rank normalises only its slice of the tokens, so its weight gradient is a
    partial sum: the weight is marked `sequence_parallel`, and megatron-core's finalize_model_grads
    all-reduces such gradients over the TP group."""

    def __new__(cls, config: TransformerConfig, hidden_size: int, eps: float = 1e-5,
                **_unused) -> torch.nn.RMSNorm:
        if config.normalization != "RMSNorm":
            raise ValueError(f"models.spec.RMSNorm builds RMSNorm only, got {config.normalization!r}")
        norm = torch.nn.RMSNorm(hidden_size, eps=eps)
        norm.weight.sequence_parallel = config.sequence_parallel
        return norm


_FLASH_DTYPES = (torch.bfloat16, torch.float16)
_log = logging.getLogger(__name__)
_logged_choices: set[str] = set()


def _log_choice_once(choice: str) -> None:
    if choice not in _logged_choices:
        _logged_choices.add(choice)
        _log.info("core attention: %s", choice)


def uses_flash(query: torch.Tensor, attention_mask: torch.Tensor | None) -> bool:
    """flash-attn runs CUDA bf16/fp16 tensors without an explicit mask; fp32 (which it rejects), CPU
    tensors and masked batches go to SDPA."""
    return query.is_cuda and query.dtype in _FLASH_DTYPES and attention_mask is None


class FlashVarlenAttention(SDPAttention):
    """CUDA + flash-attn: `flash_attn_varlen_func` for packed THD batches (cu_seqlens stay on the device;
    the longest sequence comes from the host-side `max_seqlen_q` pack_rows sets, so no device read-back),
    `flash_attn_func` otherwise. fp32, CPU tensors and explicit masks fall back to SDPAttention
    (`uses_flash`); the choice is logged once per kind."""

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if not uses_flash(query, attention_mask):
            _log_choice_once(f"SDPA ({query.dtype}, {query.device.type}"
                             f"{', explicit mask' if attention_mask is not None else ''})")
            return super().forward(query, key, value, attention_mask, attn_mask_type, attention_bias,
                                   packed_seq_params)
        from flash_attn import flash_attn_func, flash_attn_varlen_func

        _log_choice_once(f"flash-attn {'varlen ' if packed_seq_params is not None else ''}({query.dtype})")

        dropout = self.dropout_p if self.training else 0.0
        if packed_seq_params is not None:
            cu = packed_seq_params.cu_seqlens_q.to(torch.int32)
            max_len = int(packed_seq_params.max_seqlen_q or (cu[1:] - cu[:-1]).max())
            out = flash_attn_varlen_func(query, key, value, cu, cu, max_len, max_len, dropout_p=dropout,
                                         softmax_scale=self.softmax_scale, causal=True)
            return out.reshape(query.shape[0], -1)
        s, b, n, d = query.shape
        out = flash_attn_func(query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1),
                              dropout_p=dropout, softmax_scale=self.softmax_scale, causal=True)
        return out.transpose(0, 1).reshape(s, b, n * d)


def core_attention_class(device_type: str) -> type[SDPAttention]:
    """flash-attn on CUDA when installed, SDPA everywhere else."""
    if device_type == "cuda":
        try:
            import flash_attn  # noqa: F401

            return FlashVarlenAttention
        except ImportError:
            return SDPAttention
    return SDPAttention


def layer_spec(device_type: str = "cpu", transformer_impl: str = "local") -> ModuleSpec:
    """The TransformerLayer spec: Megatron local modules + our core attention, or (transformer_impl =
    "transformer_engine", resolved by models/transformer_impl.py) megatron-core's TE spec."""
    if transformer_impl == "transformer_engine":
        return te_layer_spec()
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=RMSNorm,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": AttnMaskType.causal},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=ColumnParallelLinear,
                    core_attention=core_attention_class(device_type),
                    linear_proj=RowParallelLinear,
                    q_layernorm=IdentityOp,
                    k_layernorm=IdentityOp,
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=RMSNorm,
            mlp=ModuleSpec(module=MLP, submodules=MLPSubmodules(linear_fc1=ColumnParallelLinear,
                                                                linear_fc2=RowParallelLinear)),
            mlp_bda=get_bias_dropout_add,
        ),
    )


def block_spec(num_layers_this_stage: int, device_type: str = "cpu", transformer_impl: str = "local"
               ) -> TransformerBlockSubmodules:
    """All layers of this pipeline stage plus the final RMSNorm."""
    final_norm = te_final_norm() if transformer_impl == "transformer_engine" else RMSNorm
    return TransformerBlockSubmodules(layer_specs=[layer_spec(device_type, transformer_impl)] * num_layers_this_stage,
                                      layer_norm=final_norm)
