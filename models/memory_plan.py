"""Bytes one rank holds for a Megatron GPTModel of primeflow (models/gpt.py, models/spec.py): parameters
from the model shapes, and the activations of one packed micro-batch under a recompute / sequence-parallel
setting (models/memory.py), from a per-layer formula. `primeflow plan` (trainer/planning/) adds them up per
stage of a PRIME step; tests/trainer/test_plan.py checks the formula against the saved-tensor bytes and the
allocator peak of real small models (TP=1 and TP=2 under torchrun, fp32 and bf16, recompute none / full /
selective, SP on / off).

Every term below is what autograd keeps for the local layer spec, read off saved-tensor hooks on CPU:
* RMSNorm (torch.nn.RMSNorm, composite): its fp32 input and normalised input + fp32 rstd, whatever the
  model dtype (it upcasts); a fused CUDA / Transformer Engine norm keeps less (input + rstd), so on GPU
  this term is an upper bound.
* ColumnParallelLinear keeps its input *before* the sequence-parallel all-gather (it re-gathers in
  backward), RowParallelLinear its full-token input; weights are parameters (resident anyway).
* Rotary embeddings: cos and sin [t, 1, 1, d] for q and for k.
* Core attention: SDPA (CPU, fp32, and CUDA without flash-attn) pads the packed sequences to
  [sequences, heads, longest, d], repeats K/V to every query head and keeps q, k, v, out, the lse and the
  additive mask [sequences, 1, longest, longest] (quadratic in the longest sequence); flash-attn varlen
  (CUDA bf16, the GPU extra) keeps rotated q, k, the fused qkv output v is a view of, out and the lse.
* SwiGLU MLP: the fc1 output [t, 2f], two [t, f] products, and fc2's input.
Packed token counts are padded to a multiple of tp under SP (models/logprobs.py); pass the padded count.

Legend: t tokens of the micro-batch, h hidden, f ffn / tp, n query heads / tp, g KV groups / tp, d head dim,
e bytes per element of the compute dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import ModelConfig
from .memory import ActivationMemory

FP32 = 4
INT64 = 8
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ATTENTION_KINDS = ("sdpa", "flash")
# Measured on CPU (saved-tensor hooks): what a recompute unit's checkpoint keeps besides its hidden-state
# input (position / rotary tensors), per token.
_CHECKPOINT_EXTRA_PER_TOKEN = 32
# The fused log-prob head's backward on CPU works on [t, 256] fp32 blocks of dz (kernels/linear_logprob);
# on CUDA on blocks of at most 64 Mi elements (`grad_chunking`).
_HEAD_CPU_COLS = 256
_HEAD_CUDA_BLOCK = 64 << 20


def dtype_bytes(dtype: str) -> int:
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype={dtype!r} is not allowed; allowed: {sorted(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


@dataclass(frozen=True)
class RankShape:
    """The sizes one rank's stage of the model has (TP-local widths, this stage's layers)."""

    hidden: int
    ffn: int                # ffn_hidden_size / tp
    heads: int              # query heads / tp
    groups: int             # KV groups / tp
    head_dim: int
    layers: int             # layers of this pipeline stage
    vocab: int              # padded vocabulary rows / tp
    vocab_padded: bool      # tp does not divide the vocabulary: the head takes the [t, vocab / tp] logits path
    qkv_bias: bool
    tied: bool
    pre_process: bool       # holds the embedding
    post_process: bool      # holds the final norm and the output layer
    tp: int


def rank_shape(cfg: ModelConfig, *, tp: int, pp: int = 1, stage: int = 0) -> RankShape:
    """Stage `stage` of `cfg` split TP x PP ways (ValueError if it does not split)."""
    cfg.check_parallel(tp=tp, pp=pp)
    return RankShape(hidden=cfg.hidden_size, ffn=cfg.ffn_hidden_size // tp, heads=cfg.num_attention_heads // tp,
                     groups=cfg.num_query_groups // tp, head_dim=cfg.head_dim, layers=cfg.num_layers // pp,
                     vocab=cfg.padded_vocab_size(tp) // tp,
                     vocab_padded=cfg.padded_vocab_size(tp) != cfg.vocab_size, qkv_bias=cfg.qkv_bias,
                     tied=cfg.tie_word_embeddings,
                     pre_process=stage == 0, post_process=stage == pp - 1, tp=tp)


@dataclass(frozen=True)
class ParamCount:
    """Parameter elements on one rank (norm weights are replicated over TP)."""

    layers: int
    embedding: int
    output: int
    final_norm: int

    @property
    def total(self) -> int:
        return self.layers + self.embedding + self.output + self.final_norm


def param_count(s: RankShape) -> ParamCount:
    qkv_width = (s.heads + 2 * s.groups) * s.head_dim
    per_layer = (s.hidden * qkv_width + (qkv_width if s.qkv_bias else 0)   # linear_qkv
                 + s.heads * s.head_dim * s.hidden                          # linear_proj
                 + s.hidden * 2 * s.ffn + s.ffn * s.hidden                  # linear_fc1 (gate|up), linear_fc2
                 + 2 * s.hidden)                                            # the two RMSNorm weights
    embedding = s.vocab * s.hidden if s.pre_process else 0
    # Untied: the last stage owns output_layer. Tied with PP > 1: the last stage keeps its own copy of the
    # embedding (kept in sync by Megatron), so it counts there too.
    output = s.vocab * s.hidden if s.post_process and (not s.tied or not s.pre_process) else 0
    return ParamCount(layers=per_layer * s.layers, embedding=embedding, output=output,
                      final_norm=s.hidden if s.post_process else 0)


def full_model_params(cfg: ModelConfig) -> int:
    """Every parameter of the unsplit model (what vLLM loads at rollout.tp = 1), unpadded vocabulary."""
    s = rank_shape(cfg, tp=1)
    counts = param_count(s)
    pad = (s.vocab - cfg.vocab_size) * s.hidden
    return counts.total - pad * (1 if cfg.tie_word_embeddings else 2)


@dataclass(frozen=True)
class MicroBatch:
    """One packed micro-batch: `tokens` in `sequences` sequences of at most `longest` tokens."""

    tokens: int
    sequences: int
    longest: int

    @staticmethod
    def of(tokens: int, longest: int) -> MicroBatch:
        """`tokens` packed from sequences of `longest` tokens (the worst case for padded attention)."""
        longest = max(1, min(longest, tokens))
        return MicroBatch(tokens=tokens, sequences=math.ceil(tokens / longest), longest=longest)

    def padded(self, multiple: int) -> MicroBatch:
        return MicroBatch(tokens=-(-self.tokens // multiple) * multiple, sequences=self.sequences,
                          longest=self.longest)


@dataclass(frozen=True)
class LayerBytes:
    """Bytes one transformer layer keeps for backward, by part."""

    norms: int
    attention: int          # linear_qkv input, rotary, core attention, linear_proj input
    mlp: int                # linear_fc1 input, SwiGLU, linear_fc2 input

    @property
    def total(self) -> int:
        return self.norms + self.attention + self.mlp


def _norm_bytes(tokens: int, hidden: int) -> int:
    return tokens * (2 * hidden * FP32 + FP32)


def _core_attention_bytes(s: RankShape, mb: MicroBatch, e: int, attention: str) -> int:
    t, n, g, d = mb.tokens, s.heads, s.groups, s.head_dim
    if attention == "flash":
        # rotated q and k (new tensors), v a view of the fused qkv output (its whole storage), out, lse
        return t * (n * d + g * d + (n + 2 * g) * d + n * d) * e + t * n * FP32
    if attention != "sdpa":
        raise ValueError(f"attention={attention!r} is not allowed; allowed: {list(ATTENTION_KINDS)}")
    padded = mb.sequences * mb.longest
    return (padded * 4 * n * d * e                       # q, k, v (repeated to n heads), out
            + padded * n * FP32                          # lse
            + mb.sequences * mb.longest ** 2 * e         # additive mask
            + padded * (INT64 + 1) + t * INT64)          # gather / scatter indices


def layer_bytes(s: RankShape, mb: MicroBatch, *, e: int, sequence_parallel: bool, attention: str,
                recompute_modules: tuple[str, ...] = ()) -> LayerBytes:
    """What one layer keeps without full recompute; `recompute_modules` (selective) drops core_attn / mlp."""
    t, h, f, n, g, d = mb.tokens, s.hidden, s.ffn, s.heads, s.groups, s.head_dim
    t_sp = t // s.tp if sequence_parallel and s.tp > 1 else t
    norms = 2 * _norm_bytes(t_sp, h)
    rotary = 4 * t * d * e
    if "core_attn" in recompute_modules:
        # the checkpoint keeps its inputs: rotated q and k, and v (a view of the qkv output's storage)
        core = t * (n * d + g * d + (n + 2 * g) * d) * e
    else:
        core = _core_attention_bytes(s, mb, e, attention)
    attention_bytes = t_sp * h * e + rotary + core + t * n * d * e
    if "mlp" in recompute_modules:
        mlp = t_sp * h * e              # the checkpoint keeps the MLP's (normalised) input only
    else:
        mlp = t_sp * h * e + t * 4 * f * e + t * f * e
    return LayerBytes(norms=norms, attention=attention_bytes, mlp=mlp)


def head_bytes(s: RankShape, mb: MicroBatch, *, e: int, sequence_parallel: bool) -> int:
    """The final norm and the fused log-prob head (gathered hidden states, labels, fp32 statistics), plus
    the embedding's token ids: kept on the last / first stage."""
    t = mb.tokens
    t_sp = t // s.tp if sequence_parallel and s.tp > 1 else t
    out = 0
    if s.post_process:
        out += _norm_bytes(t_sp, s.hidden) + t * s.hidden * e + t * (INT64 + 2 * FP32) + t * (2 * INT64 + FP32)
        if s.vocab_padded:  # models/gpt.py: padded vocabularies (tiny test ones) go through fp32 logits
            out += t * s.vocab * FP32
    if s.pre_process:
        out += t * INT64
    return out


@dataclass(frozen=True)
class ActivationBytes:
    """Activation bytes of one micro-batch on one rank (the stage with the head when PP = 1)."""

    saved: int                  # kept for backward after the forward (all layers of the stage + head)
    per_layer: LayerBytes       # one layer without recompute (what a recomputed layer rebuilds)
    train_peak: int             # forward + backward: saved + the worst backward moment's extra
    forward_peak: int           # a no-grad forward (old / reference log-probs): one layer's working set
    recomputed_layers: int      # layers whose activations are rebuilt in backward (full recompute)


def activation_bytes(s: RankShape, mb: MicroBatch, memory: ActivationMemory, *, dtype: str,
                     attention: str = "sdpa", device: str = "cpu") -> ActivationBytes:
    """Saved bytes and peaks of one micro-batch of `mb` through this rank's stage under `memory`."""
    e = dtype_bytes(dtype)
    sp = memory.sequence_parallel and s.tp > 1
    if sp:
        mb = mb.padded(s.tp)
    t, h, f = mb.tokens, s.hidden, s.ffn
    t_sp = t // s.tp if sp else t
    full = layer_bytes(s, mb, e=e, sequence_parallel=sp, attention=attention)
    kept = full
    if memory.recompute == "selective":
        kept = layer_bytes(s, mb, e=e, sequence_parallel=sp, attention=attention,
                           recompute_modules=memory.recompute_modules)
    head = head_bytes(s, mb, e=e, sequence_parallel=sp)
    checkpoint_input = t_sp * h * e + t * _CHECKPOINT_EXTRA_PER_TOKEN
    unit = 0
    if memory.recompute == "full":
        k = memory.recompute_num_layers
        if memory.recompute_method == "uniform":
            units = math.ceil(s.layers / k)
            layers_saved = units * checkpoint_input
            unit = min(k, s.layers)
        else:  # block: the first k layers of the stage are checkpointed, the others keep everything
            checkpointed = min(k, s.layers)
            layers_saved = checkpointed * checkpoint_input + (s.layers - checkpointed) * full.total
            unit = 1 if checkpointed else 0
    else:
        layers_saved = s.layers * kept.total
    saved = layers_saved + head

    # Backward, measured on CPU: the worst moment is either the head's backward (everything still saved,
    # plus dz blocks, d(hidden) and d(output weight) in fp32) or a layer's backward after the head's
    # tensors are freed (that layer rebuilt when recomputed, plus d(fc1 output) and d(hidden)).
    head_extra = 0
    if s.post_process:
        cols = _HEAD_CPU_COLS if device == "cpu" else max(1024, _HEAD_CUDA_BLOCK // max(t, 1))
        head_extra = t * min(cols, s.vocab) * FP32 + t * h * FP32 + s.vocab * h * FP32
        if s.vocab_padded:
            head_extra += 2 * t * s.vocab * FP32
    layer_extra = t * (2 * f + h) * e
    if sp:  # the linears re-gather their sequence-sharded inputs in backward and reduce-scatter d(input)
        layer_extra += 2 * t * h * e
    if memory.recompute == "selective" and "mlp" in memory.recompute_modules:
        # measured (bench/plan_validation.py, TP 1 and 2): while a recomputed MLP runs its backward, its
        # recomputed output (t h) and one f-wide temporary stay alive besides what a plain backward holds
        layer_extra += t * (f + h) * e
    if e < FP32:  # bf16: fp32 copies of d(hidden) through the upcasting norms and of the weight gradients
        layer_extra += t_sp * h * FP32 + (2 * f * h) * FP32
    # the layer-phase moment: what is still saved when the worst layer's backward runs (later layers and
    # the head freed), plus what that layer rebuilds
    if memory.recompute == "full" and memory.recompute_method == "block":
        checkpointed = min(memory.recompute_num_layers, s.layers)
        still_saved = saved - head - (s.layers - checkpointed) * full.total
        rebuilt = full.total if checkpointed else 0
    else:
        still_saved = saved - head
        rebuilt = {"full": unit * full.total, "selective": full.total - kept.total}.get(memory.recompute, 0)
    train_peak = max(saved + head_extra, still_saved + rebuilt + layer_extra)

    # A no-grad forward holds one layer's MLP working set (fc1 output, SwiGLU products, a copy of the gate)
    # and the residual stream (measured: 5 f + 4 h per token; SP saves up to one h of it, not counted).
    forward_peak = t * (5 * f + 4 * h) * e
    return ActivationBytes(saved=saved, per_layer=full, train_peak=train_peak, forward_peak=forward_peak,
                           recomputed_layers=unit)
