"""The one HF <-> Megatron weight-name table: which Megatron parameter of a pipeline stage holds which HF
tensor(s), and how its TP shards are laid out. HF import, HF export (models/hf_checkpoint.py) and the vLLM
refit (trainer/rollout/weight_sync.py) all walk this table, so a name or a layout is written once.

Layouts of a Megatron parameter (TP size tp; ng KV groups, nq query heads, d head dim):
  replicated  norms: the whole tensor on every TP rank; one HF tensor.
  vocab       word_embeddings / output_layer: rows split after padding the vocabulary to a multiple of tp with
              zero rows (the model masks their logits to -inf, see gpt.py); HF holds only the real rows.
  qkv         linear_qkv weight [(nq + 2 ng) d / tp, H] or bias: for each of this rank's ng/tp groups, that
              group's nq/ng query heads, then its key head, then its value head (HF: q_proj, k_proj, v_proj).
  fc1         linear_fc1 [2 F / tp, H]: this rank's slice of gate_proj, then the same slice of up_proj.
  cols        linear_proj / linear_fc2: input columns split (RowParallel); HF: o_proj / down_proj.
Layers: Megatron layer j of a PP stage holds HF layer `layer_number - 1` (layer_number is global).
Names: the local modules' and Transformer Engine's differ only in where a layer's two norm weights live
(`norm_names`); layouts are the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from .config import ModelConfig

Layout = Literal["replicated", "vocab", "qkv", "fc1", "cols"]
_TP_DIM: dict[str, int | None] = {"replicated": None, "vocab": 0, "qkv": 0, "fc1": 0, "cols": 1}


@dataclass(frozen=True)
class WeightName:
    """One Megatron parameter of a stage and the full HF tensors it corresponds to, in HF order."""

    megatron: str                         # name in model.named_parameters()
    hf: tuple[str, ...]
    hf_shapes: tuple[tuple[int, ...], ...]  # full (unsharded, unpadded) HF shapes, one per name in `hf`
    layout: Layout
    # The last PP stage's own copy of a tied embedding: loaded from embed_tokens, never written back (HF has
    # no lm_head for a tied model, and the first stage already provides embed_tokens).
    tied_copy: bool = False

    @property
    def tp_dim(self) -> int | None:
        """Dimension the TP shards are concatenated along; None = replicated."""
        return _TP_DIM[self.layout]


def norm_names(transformer_impl: str) -> tuple[str, str]:
    """A layer's (pre-attention, pre-MLP) RMSNorm weight, relative to the layer: Transformer Engine fuses each
    norm into the GEMM after it (TELayerNormColumnParallelLinear owns `layer_norm_weight`)."""
    if transformer_impl == "transformer_engine":
        return "self_attention.linear_qkv.layer_norm_weight", "mlp.linear_fc1.layer_norm_weight"
    if transformer_impl == "local":
        return "input_layernorm.weight", "pre_mlp_layernorm.weight"
    raise ValueError(f"transformer_impl={transformer_impl!r} is not a resolved implementation; allowed: "
                     "'local', 'transformer_engine'")


def weight_names(cfg: ModelConfig, layers: Mapping[int, int] | None = None, *, first_stage: bool = True,
                 last_stage: bool = True, transformer_impl: str = "local") -> list[WeightName]:
    """The table for one pipeline stage: `layers` maps HF layer index -> local Megatron layer index (None:
    every layer, identity, i.e. PP = 1); first_stage / last_stage hold the embedding / final norm and head;
    transformer_impl (resolved: local | transformer_engine) names the norm weights (`norm_names`).
    Order: embedding, layers, final norm, head (the order the refit feeds vLLM in)."""
    attn_norm, mlp_norm = norm_names(transformer_impl)
    H, V, F, d = cfg.hidden_size, cfg.vocab_size, cfg.ffn_hidden_size, cfg.head_dim
    q, kv = cfg.num_attention_heads * d, cfg.num_query_groups * d
    if layers is None:
        layers = {i: i for i in range(cfg.num_layers)}
    out: list[WeightName] = []

    def add(megatron: str, layout: Layout, hf: list[tuple[str, tuple[int, ...]]], tied_copy: bool = False) -> None:
        out.append(WeightName(megatron, tuple(n for n, _ in hf), tuple(s for _, s in hf), layout, tied_copy))

    if first_stage:
        add("embedding.word_embeddings.weight", "vocab", [("model.embed_tokens.weight", (V, H))])
    for hf_i, j in sorted(layers.items()):
        hf, mg = f"model.layers.{hf_i}.", f"decoder.layers.{j}."
        attn = hf + "self_attn."
        add(mg + attn_norm, "replicated", [(hf + "input_layernorm.weight", (H,))])
        add(mg + "self_attention.linear_qkv.weight", "qkv",
            [(attn + "q_proj.weight", (q, H)), (attn + "k_proj.weight", (kv, H)), (attn + "v_proj.weight", (kv, H))])
        if cfg.qkv_bias:
            add(mg + "self_attention.linear_qkv.bias", "qkv",
                [(attn + "q_proj.bias", (q,)), (attn + "k_proj.bias", (kv,)), (attn + "v_proj.bias", (kv,))])
        add(mg + "self_attention.linear_proj.weight", "cols", [(attn + "o_proj.weight", (H, q))])
        add(mg + mlp_norm, "replicated", [(hf + "post_attention_layernorm.weight", (H,))])
        add(mg + "mlp.linear_fc1.weight", "fc1", [(hf + "mlp.gate_proj.weight", (F, H)),
                                                  (hf + "mlp.up_proj.weight", (F, H))])
        add(mg + "mlp.linear_fc2.weight", "cols", [(hf + "mlp.down_proj.weight", (H, F))])
    if last_stage:
        add("decoder.final_layernorm.weight", "replicated", [("model.norm.weight", (H,))])
        if not cfg.tie_word_embeddings:
            add("output_layer.weight", "vocab", [("lm_head.weight", (V, H))])
        elif not first_stage:  # tied, PP > 1: the last stage keeps its own copy of the embedding
            add("output_layer.weight", "vocab", [("model.embed_tokens.weight", (V, H))], tied_copy=True)
    return out


def local_layers(model) -> dict[int, int]:
    """HF layer index -> index into model.decoder.layers for the layers this PP stage holds."""
    return {layer.layer_number - 1: j for j, layer in enumerate(model.decoder.layers)}


def stage_weight_names(model) -> list[WeightName]:
    """The table for the pipeline stage `model` (a primeflow GPT model, unwrapped) holds."""
    return weight_names(model.model_config, local_layers(model), first_stage=model.pre_process,
                        last_stage=model.post_process, transformer_impl=getattr(model, "transformer_impl", "local"))


def hf_tensor_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a complete HF checkpoint of `cfg` holds, with its shape."""
    return {n: s for w in weight_names(cfg) if not w.tied_copy for n, s in zip(w.hf, w.hf_shapes, strict=True)}


def split_qkv(full: torch.Tensor, cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A full (TP-gathered) linear_qkv weight or bias -> HF q, k, v."""
    ng, d = cfg.num_query_groups, cfg.head_dim
    per = cfg.num_attention_heads // ng
    tail = full.shape[1:]
    grouped = full.reshape(ng, (per + 2) * d, *tail)
    q, k, v = grouped.split([per * d, d, d], dim=1)
    return q.reshape(-1, *tail), k.reshape(-1, *tail), v.reshape(-1, *tail)


def to_hf(weight: WeightName, full: torch.Tensor, cfg: ModelConfig, tp: int) -> list[torch.Tensor]:
    """A Megatron parameter with its TP shards concatenated along `weight.tp_dim` -> its HF tensors (in the
    order of `weight.hf`). `tp` is the trainer's TP size: fc1's gate/up interleave is per rank."""
    if weight.layout in ("replicated", "cols"):
        return [full]
    if weight.layout == "vocab":
        return [full[:cfg.vocab_size]]
    if weight.layout == "qkv":
        return list(split_qkv(full, cfg))
    if weight.layout == "fc1":  # rank r's rows are [gate_r; up_r]
        gates, ups = zip(*(p.chunk(2, dim=0) for p in full.chunk(tp, dim=0)), strict=True)
        return [torch.cat(gates), torch.cat(ups)]
    raise AssertionError(weight.layout)
