"""HF safetensors <-> Megatron GPTModel weights, with TP slicing and PP stage assignment.

Layouts (Megatron local modules, TP size tp, this rank r; ng KV groups, nq query heads, d head dim):
  linear_qkv.weight  [(nq + 2 ng) d / tp, H]: for each of this rank's ng/tp groups, that group's nq/ng query
                     heads, then its key head, then its value head (Megatron's grouped QKV layout).
  linear_fc1.weight  [2 F / tp, H]: this rank's slice of gate_proj, then the same slice of up_proj.
  linear_proj / linear_fc2: input columns split (RowParallel). Norms: replicated.
  word_embeddings / output_layer: rows split after padding the vocabulary to a multiple of tp with zero
                     rows (logits of those rows are masked to -inf by the model, see gpt.py).
Layers: Megatron layer k of this PP stage holds HF layer `layer_number - 1` (layer_number is global).

Loading streams: each rank opens the safetensors files lazily and reads only its own slice of each tensor
(safetensors slices: the other ranks' rows or columns are never read). Export gathers TP shards with
all-gathers inside each pipeline stage; each stage's TP rank 0 writes its own safetensors file (one file
when PP=1), and global rank 0 writes the index, config and tokenizer files, so no rank ever holds more than
its stage.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from safetensors import safe_open
from safetensors.torch import save_file

from .config import ModelConfig

# Present in some HF checkpoints and never used: RoPE buffers are recomputed, a tied lm_head is the embedding.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_COPIED_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "chat_template.jinja", "vocab.json", "merges.txt")


def _tp() -> tuple[int, int]:
    return parallel_state.get_tensor_model_parallel_rank(), parallel_state.get_tensor_model_parallel_world_size()


def hf_tensor_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a complete HF checkpoint of `cfg` holds, with its shape."""
    H, V, F, d = cfg.hidden_size, cfg.vocab_size, cfg.ffn_hidden_size, cfg.head_dim
    q, kv = cfg.num_attention_heads * d, cfg.num_query_groups * d
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, H)
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,),
                       p + "self_attn.q_proj.weight": (q, H), p + "self_attn.k_proj.weight": (kv, H),
                       p + "self_attn.v_proj.weight": (kv, H), p + "self_attn.o_proj.weight": (H, q),
                       p + "mlp.gate_proj.weight": (F, H), p + "mlp.up_proj.weight": (F, H),
                       p + "mlp.down_proj.weight": (H, F)})
        if cfg.qkv_bias:
            shapes.update({p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                           p + "self_attn.v_proj.bias": (kv,)})
    return shapes


class _HFReader:
    """Lazy access to the tensors of a (possibly sharded) safetensors checkpoint: header-only until read."""

    def __init__(self, path: Path, stack: ExitStack):
        index = path / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        elif (path / "model.safetensors").is_file():
            files, weight_map = ["model.safetensors"], None
        else:
            raise ValueError(f"path={str(path)!r}: no model.safetensors or model.safetensors.index.json")
        self._handles = {f: stack.enter_context(safe_open(str(path / f), framework="pt")) for f in files}
        self._where = {}
        for f, h in self._handles.items():
            for name in h.keys():
                self._where[name] = f
        if weight_map is not None:
            missing_files = {n for n, f in weight_map.items() if self._where.get(n) != f}
            if missing_files:
                raise ValueError(f"index lists tensors not found in their files: {sorted(missing_files)[:5]}")

    def names(self) -> set[str]:
        return set(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handles[self._where[name]].get_slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        return self._handles[self._where[name]].get_tensor(name)

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) only: safetensors reads just those bytes of the file."""
        return self._handles[self._where[name]].get_slice(name)[start:stop]

    def cols(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Columns [start, stop) of a 2-D tensor only."""
        return self._handles[self._where[name]].get_slice(name)[:, start:stop]


def _validate(reader: _HFReader, cfg: ModelConfig) -> None:
    want = hf_tensor_shapes(cfg)
    have = {n for n in reader.names() if not n.endswith(_IGNORED_SUFFIXES)}
    if cfg.tie_word_embeddings:
        have.discard("lm_head.weight")  # some tied checkpoints store the copy anyway
    missing, extra = sorted(set(want) - have), sorted(have - set(want))
    if missing:
        raise ValueError(f"checkpoint is missing tensor(s) {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if extra:
        raise ValueError(f"checkpoint has unexpected tensor(s) {extra[:8]}{' ...' if len(extra) > 8 else ''} "
                         f"for architecture {cfg.architecture!r}")
    for name, shape in want.items():
        got = reader.shape(name)
        if got != shape:
            raise ValueError(f"tensor {name!r} has shape {list(got)}, expected {list(shape)} from config.json")


# ---- HF -> this rank's Megatron shard ------------------------------------------------------------------

def _shard(n: int, rank: int, tp: int) -> tuple[int, int]:
    """[start, stop) of this rank's contiguous 1/tp of n (n divisible by tp: ModelConfig.check_parallel)."""
    return rank * n // tp, (rank + 1) * n // tp


# Each builder reads only this rank's slice of its HF tensor(s) (`_HFReader.rows/cols`) and returns the
# Megatron shard, so a rank never holds, and never reads from disk, more than its 1/tp of a matrix.
Build = Callable[[_HFReader, int, int], torch.Tensor]


def _replicated_tensor(name: str) -> Build:
    return lambda reader, rank, tp: reader.get(name)


def _row_shard(*names: str) -> Build:
    """This rank's rows of each tensor, concatenated (linear_fc1 = [gate rows; up rows])."""
    def build(reader: _HFReader, rank: int, tp: int) -> torch.Tensor:
        parts = [reader.rows(n, *_shard(reader.shape(n)[0], rank, tp)) for n in names]
        return parts[0] if len(parts) == 1 else torch.cat(parts)
    return build


def _col_shard(name: str) -> Build:
    return lambda reader, rank, tp: reader.cols(name, *_shard(reader.shape(name)[1], rank, tp))


def _vocab_shard(name: str, cfg: ModelConfig) -> Build:
    """This rank's rows of the vocabulary padded to a multiple of tp (padding rows are zeros)."""
    def build(reader: _HFReader, rank: int, tp: int) -> torch.Tensor:
        start, stop = _shard(cfg.padded_vocab_size(tp), rank, tp)
        real = reader.rows(name, min(start, cfg.vocab_size), min(stop, cfg.vocab_size))
        pad = (stop - start) - real.shape[0]
        return torch.cat([real, real.new_zeros(pad, *real.shape[1:])]) if pad else real
    return build


def _qkv_shard(names: list[str], cfg: ModelConfig) -> Build:
    """HF q/k/v (weights [out, H] or biases [out]) -> this rank's rows of Megatron's grouped linear_qkv:
    this rank's KV groups (contiguous), each as its query heads, then its key head, then its value head."""
    ng, d = cfg.num_query_groups, cfg.head_dim
    per = cfg.num_attention_heads // ng

    def build(reader: _HFReader, rank: int, tp: int) -> torch.Tensor:
        g0, g1 = _shard(ng, rank, tp)
        q = reader.rows(names[0], g0 * per * d, g1 * per * d)
        k, v = (reader.rows(n, g0 * d, g1 * d) for n in names[1:])
        tail, groups = q.shape[1:], g1 - g0
        grouped = torch.cat([q.reshape(groups, per * d, *tail), k.reshape(groups, d, *tail),
                             v.reshape(groups, d, *tail)], dim=1)
        return grouped.reshape(-1, *tail)
    return build


def _local_layers(model) -> dict[int, int]:
    """HF layer index -> index into model.decoder.layers for the layers this PP stage holds."""
    return {layer.layer_number - 1: j for j, layer in enumerate(model.decoder.layers)}


def _megatron_targets(model, cfg: ModelConfig) -> Iterator[tuple[str, Build]]:
    """(megatron param name, builder of this rank's shard from the HF checkpoint) for this stage."""
    if model.pre_process:
        yield "embedding.word_embeddings.weight", _vocab_shard("model.embed_tokens.weight", cfg)
    if model.post_process:
        yield "decoder.final_layernorm.weight", _replicated_tensor("model.norm.weight")
        if not cfg.tie_word_embeddings:
            yield "output_layer.weight", _vocab_shard("lm_head.weight", cfg)
        elif not model.pre_process:  # tied, PP > 1: the last stage keeps its own copy of the embedding
            yield "output_layer.weight", _vocab_shard("model.embed_tokens.weight", cfg)
    for hf_i, j in _local_layers(model).items():
        hf, mg = f"model.layers.{hf_i}.", f"decoder.layers.{j}."
        yield mg + "input_layernorm.weight", _replicated_tensor(hf + "input_layernorm.weight")
        yield mg + "pre_mlp_layernorm.weight", _replicated_tensor(hf + "post_attention_layernorm.weight")
        yield (mg + "self_attention.linear_qkv.weight",
               _qkv_shard([hf + f"self_attn.{x}_proj.weight" for x in "qkv"], cfg))
        if cfg.qkv_bias:
            yield (mg + "self_attention.linear_qkv.bias",
                   _qkv_shard([hf + f"self_attn.{x}_proj.bias" for x in "qkv"], cfg))
        yield mg + "self_attention.linear_proj.weight", _col_shard(hf + "self_attn.o_proj.weight")
        yield mg + "mlp.linear_fc1.weight", _row_shard(hf + "mlp.gate_proj.weight", hf + "mlp.up_proj.weight")
        yield mg + "mlp.linear_fc2.weight", _col_shard(hf + "mlp.down_proj.weight")


def load_hf_checkpoint(model, path: str | Path) -> None:
    """Fill this rank's shard of `model` (from build_model) with the HF checkpoint at `path`.

    Validates the checkpoint against the model's config first (missing / unexpected tensors and wrong shapes
    raise ValueError naming the tensor), then copies tensor by tensor, reading only what this PP stage
    needs. Remembers `path` so `export_hf_checkpoint` can copy the tokenizer and configs."""
    path = Path(path)
    cfg: ModelConfig = model.model_config
    rank, tp = _tp()
    params = dict(model.named_parameters())
    with ExitStack() as stack, torch.no_grad():
        reader = _HFReader(path, stack)
        _validate(reader, cfg)
        filled = set()
        for name, build in _megatron_targets(model, cfg):
            if name not in params:
                raise RuntimeError(f"model has no parameter {name!r} (model/spec mismatch)")
            shard = build(reader, rank, tp)
            param = params[name]
            if tuple(shard.shape) != tuple(param.shape):
                raise RuntimeError(f"{name}: built shard {list(shard.shape)} != parameter {list(param.shape)}")
            param.copy_(shard.to(device=param.device, dtype=param.dtype))
            filled.add(name)
    # build_model(initialize=False) leaves weights uninitialised: every one must have come from the file
    unfilled = sorted(set(params) - filled)
    if unfilled:
        raise RuntimeError(f"parameters not filled from the checkpoint (model/spec mismatch): {unfilled[:5]}")
    model.hf_source_path = path


# ---- this stage's Megatron shards -> HF ----------------------------------------------------------------

def _gather(t: torch.Tensor | None, dim: int) -> torch.Tensor:
    if t is None:
        raise ValueError("a parameter has no .grad (run backward first, or pass grads=False)")
    rank, tp = _tp()
    if tp == 1:
        return t.detach().cpu()
    parts = [torch.empty_like(t) for _ in range(tp)]
    dist.all_gather(parts, t.detach().contiguous(), group=parallel_state.get_tensor_model_parallel_group())
    return torch.cat([p.cpu() for p in parts], dim=dim)


def _replicated(t: torch.Tensor | None) -> torch.Tensor:
    if t is None:
        raise ValueError("a parameter has no .grad (run backward first, or pass grads=False)")
    return t.detach().cpu()


def _split_qkv(full: torch.Tensor, cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ng, d = cfg.num_query_groups, cfg.head_dim
    per = cfg.num_attention_heads // ng
    tail = full.shape[1:]
    grouped = full.reshape(ng, (per + 2) * d, *tail)
    q, k, v = grouped.split([per * d, d, d], dim=1)
    return q.reshape(-1, *tail), k.reshape(-1, *tail), v.reshape(-1, *tail)


def _split_fc1(shard: torch.Tensor, tp: int) -> tuple[torch.Tensor, torch.Tensor]:
    parts = _gather(shard, 0).chunk(tp, dim=0)  # per rank: [gate_r; up_r]
    gates, ups = zip(*(p.chunk(2, dim=0) for p in parts), strict=True)
    return torch.cat(gates), torch.cat(ups)


def hf_state_dict(model, *, grads: bool = False) -> dict[str, torch.Tensor]:
    """This pipeline stage's parameters (or their gradients with grads=True) as full HF-named CPU tensors,
    gathered over TP (collective over the TP group). Used by export and by gradient-parity tests.

    `model` may be inside megatron-core's DDP / Float16Module; its gradients are then DDP's `main_grad`
    (the fp32 accumulation buffer, DP-reduced after finalize_model_grads) rather than `.grad`."""
    from .gpt import unwrap_model

    inner = unwrap_model(model)
    return _stage_tensors(inner, inner.model_config, grads=grads)


def _stage_tensors(model, cfg: ModelConfig, *, grads: bool = False) -> dict[str, torch.Tensor]:
    """Full (TP-gathered) HF tensors of this pipeline stage; collective over the TP group."""
    _, tp = _tp()
    p = {n: (getattr(t, "main_grad", t.grad) if grads else t) for n, t in model.named_parameters()}
    out: dict[str, torch.Tensor] = {}
    if model.pre_process:
        out["model.embed_tokens.weight"] = _gather(p["embedding.word_embeddings.weight"], 0)[:cfg.vocab_size]
    if model.post_process:
        out["model.norm.weight"] = _replicated(p["decoder.final_layernorm.weight"])
        if not cfg.tie_word_embeddings:
            out["lm_head.weight"] = _gather(p["output_layer.weight"], 0)[:cfg.vocab_size]
    for hf_i, j in _local_layers(model).items():
        hf, mg = f"model.layers.{hf_i}.", f"decoder.layers.{j}."
        out[hf + "input_layernorm.weight"] = _replicated(p[mg + "input_layernorm.weight"])
        out[hf + "post_attention_layernorm.weight"] = _replicated(p[mg + "pre_mlp_layernorm.weight"])
        kinds = ["weight", "bias"] if cfg.qkv_bias else ["weight"]
        for kind in kinds:
            full = _gather(p[mg + f"self_attention.linear_qkv.{kind}"], 0)
            for x, t in zip("qkv", _split_qkv(full, cfg), strict=True):
                out[hf + f"self_attn.{x}_proj.{kind}"] = t
        out[hf + "self_attn.o_proj.weight"] = _gather(p[mg + "self_attention.linear_proj.weight"], 1)
        gate, up = _split_fc1(p[mg + "mlp.linear_fc1.weight"], tp)
        out[hf + "mlp.gate_proj.weight"], out[hf + "mlp.up_proj.weight"] = gate, up
        out[hf + "mlp.down_proj.weight"] = _gather(p[mg + "mlp.linear_fc2.weight"], 1)
    return {k: v.contiguous() for k, v in out.items()}


def export_hf_checkpoint(model, path: str | Path) -> Path:
    """Write the model as an HF checkpoint (safetensors + config + tokenizer files) that transformers and
    vLLM load. Collective: every rank of the model-parallel group of data-parallel rank 0 must call it
    (other DP ranks may call it too; they write nothing). Returns `path`."""
    path = Path(path)
    cfg: ModelConfig = model.model_config
    tp_rank, _ = _tp()
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    writer = parallel_state.get_data_parallel_rank() == 0 and tp_rank == 0
    tensors = _stage_tensors(model, cfg)
    file_name = "model.safetensors" if pp == 1 else f"model-{pp_rank + 1:05d}-of-{pp:05d}.safetensors"
    if writer:
        path.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path / file_name), metadata={"format": "pt"})
    names = sorted(tensors)
    if pp > 1:
        all_names: list[list[str] | None] = [None] * pp
        dist.all_gather_object(all_names, names, group=parallel_state.get_pipeline_model_parallel_group())
    else:
        all_names = [names]
    if writer and pp_rank == 0:
        if pp > 1:
            weight_map = {n: f"model-{s + 1:05d}-of-{pp:05d}.safetensors" for s, ns in enumerate(all_names)
                          for n in ns}
            (path / "model.safetensors.index.json").write_text(
                json.dumps({"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}, indent=2) + "\n")
        _write_side_files(model, cfg, path, dtype=next(iter(tensors.values())).dtype)
    if dist.is_initialized():
        dist.barrier()
    return path


def _write_side_files(model, cfg: ModelConfig, path: Path, *, dtype: torch.dtype) -> None:
    """config.json (+ generation / tokenizer files): copied from the checkpoint the model was loaded from,
    so an HF -> Megatron -> HF round trip reproduces them; generated from the ModelConfig otherwise."""
    src: Path | None = getattr(model, "hf_source_path", None)
    copied = set()
    if src is not None:
        for name in _COPIED_FILES:
            if (src / name).is_file():
                shutil.copyfile(src / name, path / name)
                copied.add(name)
    if "config.json" in copied:
        hf = json.loads((path / "config.json").read_text())
        want = str(dtype).removeprefix("torch.")
        if hf.get("torch_dtype", want) != want:
            hf["torch_dtype"] = want
            (path / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
    else:
        hf = cfg.to_hf_dict()
        hf["torch_dtype"] = str(dtype).removeprefix("torch.")
        (path / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
