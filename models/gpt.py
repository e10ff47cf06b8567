"""build_model: a Megatron-core GPTModel (Qwen2/Llama family) for the current parallel state, with a
log-prob head.

`PrimeGPTModel` is Megatron's GPTModel with one change in the output head: called with `labels`, it returns
per-token log-probs [b, s] of those labels (fp32) instead of the cross-entropy loss, computed from the
final hidden states and this rank's vocab shard of the output weight by
`primeflow.kernels.linear_token_logprobs` (vocab-parallel over the TP group), so no [tokens, vocab] tensor
exists. Without labels it returns logits [b, s, V_pad / tp] like GPTModel, with the padded vocabulary
columns set to -inf (never 0: a zero-weight row would give logit 0 and change the softmax).

Process groups are not created here: `megatron.core.parallel_state` must already be initialised (the
trainer owns that; tests use a gloo world, see tests/models/dist.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import parallel_state, tensor_parallel
from megatron.core.models.gpt import GPTModel
from megatron.core.tensor_parallel import copy_to_tensor_model_parallel_region, gather_from_sequence_parallel_region
from megatron.core.transformer.transformer_block import get_num_layers_to_build
from megatron.core.transformer.transformer_config import TransformerConfig
from primeflow.kernels import linear_token_logprobs, token_logprobs

from .compat import enable_cpu_megatron, tensor_cuda_is_identity
from .config import ModelConfig
from .memory import ActivationMemory
from .spec import block_spec
from .transformer_impl import resolve_transformer_impl

ROLES = ("policy", "prm", "ref")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def transformer_config(cfg: ModelConfig, *, params_dtype: torch.dtype = torch.float32,
                       memory: ActivationMemory | None = None, initialize: bool = True,
                       transformer_impl: str = "local") -> TransformerConfig:
    """Megatron TransformerConfig for `cfg` at the current TP/PP sizes, with `memory`'s recompute and
    sequence parallelism. With the local modules every fusion is off: they run unfused on CPU, and fused CUDA
    paths come from our kernels. With Transformer Engine (a resolved transformer_impl, CUDA only) TE's fused
    RoPE and Megatron's fused SwiGLU are on, as Megatron-LM runs them."""
    te = transformer_impl == "transformer_engine"
    tp = parallel_state.get_tensor_model_parallel_world_size()
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    cfg.check_parallel(tp=tp, pp=pp)
    return TransformerConfig(
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        ffn_hidden_size=cfg.ffn_hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        num_query_groups=cfg.num_query_groups,
        kv_channels=cfg.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=cfg.rms_norm_eps,
        gated_linear_unit=True,          # SwiGLU: linear_fc1 = [gate; up]
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=cfg.qkv_bias,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bias_activation_fusion=te,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=te,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        attention_softmax_in_fp32=True,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        **(memory or ActivationMemory()).transformer_kwargs(tp),
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        fp16=params_dtype == torch.float16,
        # Random weights (initialize=True: benchmarks, tests): CPU init of the full matrix, then slicing,
        # gives the same model for every TP size. Weights that a checkpoint overwrites anyway
        # (initialize=False) are allocated empty, straight on the device: no full-matrix init per rank.
        use_cpu_initialization=initialize,
        perform_initialization=initialize,
        init_method_std=0.02,
    )


class PrimeGPTModel(GPTModel):
    """GPTModel whose output head returns label log-probs (with labels) or -inf-padded logits (without)."""

    def __init__(self, *args, real_vocab_size: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.real_vocab_size = real_vocab_size
        # Sampling temperature the log-prob head divides logits by (set by sequence_logprobs / the trainer).
        self.logprob_temperature = 1.0
        # Set by models.hidden.final_hidden_states: the forward skips the output layer and returns the final
        # hidden states [b*s, H] (for a head fused outside the model, e.g. kernels.linear_prime_rewards).
        self.returns_hidden = False

    def setup_embeddings_and_output_layer(self) -> None:
        # Tied embeddings with PP > 1: Megatron syncs the last stage's copy with `weight.data.cuda()` then an
        # all-reduce; on CPU the tensor must stay where it is (see compat.py).
        with tensor_cuda_is_identity():
            super().setup_embeddings_and_output_layer()

    def output_weight_shard(self) -> torch.Tensor:
        """This rank's [V_pad / tp, H] rows of the output projection (the embedding when tied)."""
        if self.share_embeddings_and_output_weights:
            return self.shared_embedding_or_output_weight()
        return self.output_layer.weight

    def _vocab_shard(self) -> tuple[int, int]:
        tp_rank = parallel_state.get_tensor_model_parallel_rank()
        local = self.vocab_size // parallel_state.get_tensor_model_parallel_world_size()
        return tp_rank * local, local

    def _mask_padded_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        start, local = self._vocab_shard()
        if logits.shape[-1] != local:  # gathered output: the full padded vocabulary
            start = 0
        n_valid = self.real_vocab_size - start
        if n_valid >= logits.shape[-1]:
            return logits
        logits = logits.clone()
        logits[..., max(n_valid, 0):] = float("-inf")
        return logits

    def _postprocess(self, **kwargs):
        if self.returns_hidden and self.post_process and not kwargs.get("mtp_in_postprocess"):
            s, b, h = kwargs["hidden_states"].shape
            return kwargs["hidden_states"].transpose(0, 1).reshape(b * s, h)
        labels = kwargs.get("labels")
        if not self.post_process or labels is None or kwargs.get("mtp_in_postprocess"):
            out = super()._postprocess(**kwargs)
            return self._mask_padded_vocab(out) if self.post_process and labels is None else out
        hidden_sbh = kwargs["hidden_states"]
        if self.config.sequence_parallel:
            # Each TP rank holds its slice of the tokens; the head needs all of them (it is the vocabulary
            # that is split over TP). The fused op all-reduces d(hidden) over TP itself, so the gather's
            # backward only keeps this rank's slice (tensor_parallel_output_grad=False); the padded-vocab
            # path below gets the usual reduce-scatter instead.
            hidden_sbh = gather_from_sequence_parallel_region(
                hidden_sbh, tensor_parallel_output_grad=self.vocab_size != self.real_vocab_size)
        s, b, h = hidden_sbh.shape
        hidden_NH = hidden_sbh.transpose(0, 1).reshape(b * s, h)
        labels_N = labels.reshape(b * s).to(torch.int64)
        tp_group = parallel_state.get_tensor_model_parallel_group()
        tp_group = tp_group if parallel_state.get_tensor_model_parallel_world_size() > 1 else None
        weight_VH = self.output_weight_shard()
        if self.vocab_size == self.real_vocab_size:
            logp_N = linear_token_logprobs(hidden_NH, weight_VH, labels_N, temperature=self.logprob_temperature,
                                           tp_group=tp_group)
        else:
            # TODO(primeflow.kernels): linear_token_logprobs has no "valid vocab" bound, so padded rows
            # (zero weights -> logit 0) would enter the softmax. Until it has one, padded vocabularies
            # (only tiny test vocabularies: 151936 and 128256 divide every TP size <= 128) go through
            # this rank's logits shard with the pad columns at -inf: [N, V/tp] memory.
            if tp_group is not None and not self.config.sequence_parallel:
                # Identity forward, all-reduce of d(hidden) backward: each rank's logits cover only its
                # vocab shard, so the hidden-state gradient is a sum over ranks (as in ColumnParallelLinear).
                # (Under sequence parallelism the gather above reduce-scatters it.)
                hidden_NH = copy_to_tensor_model_parallel_region(hidden_NH)
            logits_NV = self._mask_padded_vocab(hidden_NH @ weight_VH.t())
            logp_N = token_logprobs(logits_NV, labels_N, temperature=self.logprob_temperature,
                                   tp_group=tp_group)
        return logp_N.view(b, s)


# Megatron's RNG tracker must hold its named states before sequence parallelism (embedding dropout forks the
# tensor-parallel state) or recompute runs. Every model here has dropout 0, so the seed changes no result.
_RNG_TRACKER_SEED = 1234


def _ensure_rng_tracker() -> None:
    if "model-parallel-rng" not in tensor_parallel.get_cuda_rng_tracker().get_states():
        tensor_parallel.model_parallel_cuda_manual_seed(_RNG_TRACKER_SEED)


def unwrap_model(model: torch.nn.Module) -> PrimeGPTModel:
    """The PrimeGPTModel inside wrappers that keep it in `.module` (megatron-core's DDP, Float16Module)."""
    while not isinstance(model, PrimeGPTModel) and hasattr(model, "module"):
        model = model.module
    if not isinstance(model, PrimeGPTModel):
        raise ValueError(f"expected a primeflow PrimeGPTModel from build_model (or a wrapper with .module), "
                         f"got {type(model).__name__}")
    return model


def build_model(cfg: ModelConfig, *, role: str, params_dtype: torch.dtype | str | None = None,
                device: torch.device | str | None = None, memory: ActivationMemory | None = None,
                initialize: bool = True, transformer_impl: str = "auto") -> PrimeGPTModel:
    """The GPTModel stage of `cfg` for this rank (current TP/PP from megatron parallel_state).

    role: "policy" | "prm" | "ref" (the PRIME models share one architecture; "ref" is frozen: no grads).
    params_dtype: defaults to the checkpoint's dtype (cfg.params_dtype). Weights are randomly initialised;
    use `load_hf_checkpoint` to fill them. memory: recompute and sequence parallelism (default: neither).
    initialize=False leaves the weights uninitialised (torch.empty) for a caller that loads every one of them
    next (`load_hf_checkpoint` checks that it does): start-up then skips the random init of full matrices.
    transformer_impl: auto | local | transformer_engine (models/transformer_impl.py); the resolved choice is
    kept as `model.transformer_impl` (it decides the parameter names: models/weight_names.py).
    """
    if role not in ROLES:
        raise ValueError(f"role={role!r} is not allowed; allowed: {list(ROLES)}")
    if params_dtype is None:
        params_dtype = cfg.params_dtype
    if isinstance(params_dtype, str):
        if params_dtype not in _DTYPES:
            raise ValueError(f"params_dtype={params_dtype!r} is not allowed; allowed: {sorted(_DTYPES)}")
        params_dtype = _DTYPES[params_dtype]
    if not parallel_state.model_parallel_is_initialized():
        raise ValueError("megatron parallel_state is not initialised: call "
                         "parallel_state.initialize_model_parallel(...) after torch.distributed.init_process_group")
    enable_cpu_megatron()
    _ensure_rng_tracker()
    device = torch.device(device) if device is not None else (
        torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu"))

    impl = resolve_transformer_impl(transformer_impl, device.type)
    tcfg = transformer_config(cfg, params_dtype=params_dtype, memory=memory, initialize=initialize,
                              transformer_impl=impl)
    tp = tcfg.tensor_model_parallel_size
    n_local_layers = get_num_layers_to_build(tcfg)
    model = PrimeGPTModel(
        config=tcfg,
        transformer_layer_spec=block_spec(n_local_layers, device.type, impl),
        vocab_size=cfg.padded_vocab_size(tp),
        real_vocab_size=cfg.vocab_size,
        max_sequence_length=cfg.max_position_embeddings,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        parallel_output=True,
        share_embeddings_and_output_weights=cfg.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_base=cfg.rope_theta,
        rope_scaling=cfg.rope_scaling_factor is not None,
        rope_scaling_factor=cfg.rope_scaling_factor or 8.0,
    )
    model.to(device)
    # torch.nn.RMSNorm (WrappedTorchNorm) ignores config.params_dtype and is created in fp32; cast the
    # stragglers so a bf16 model is bf16 throughout (as transformers loads it; mixed-precision masters
    # belong to the optimizer, not the module).
    for param in model.parameters():
        if param.dtype != params_dtype:
            param.data = param.data.to(params_dtype)
    model.model_config = cfg        # read by load/export_hf_checkpoint
    model.hf_source_path = None     # set by load_hf_checkpoint (export copies tokenizer/config from it)
    model.role = role
    model.transformer_impl = impl   # read by stage_weight_names and the checkpoint manifest
    if role == "ref":
        model.requires_grad_(False)
    return model
