"""HF safetensors <-> Megatron GPTModel weights, with TP slicing and PP stage assignment.

Which Megatron parameter holds which HF tensor(s), and how its TP shards are laid out, is the table in
models/weight_names.py (shared with the vLLM refit); this module reads and writes the files.

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
from .weight_names import WeightName, hf_tensor_shapes, stage_weight_names, to_hf

# Present in some HF checkpoints and never used: RoPE buffers are recomputed, a tied lm_head is the embedding.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_COPIED_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "chat_template.jinja", "vocab.json", "merges.txt")


def _tp() -> tuple[int, int]:
    return parallel_state.get_tensor_model_parallel_rank(), parallel_state.get_tensor_model_parallel_world_size()


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


def _shard_builder(weight: WeightName, cfg: ModelConfig) -> Build:
    """How to read this rank's shard of `weight` from the HF checkpoint, by its layout."""
    if weight.layout == "replicated":
        return _replicated_tensor(weight.hf[0])
    if weight.layout == "vocab":
        return _vocab_shard(weight.hf[0], cfg)
    if weight.layout == "qkv":
        return _qkv_shard(list(weight.hf), cfg)
    if weight.layout == "fc1":
        return _row_shard(*weight.hf)
    if weight.layout == "cols":
        return _col_shard(weight.hf[0])
    raise AssertionError(weight.layout)


def _megatron_targets(model, cfg: ModelConfig) -> Iterator[tuple[str, Build]]:
    """(megatron param name, builder of this rank's shard from the HF checkpoint) for this stage."""
    for weight in stage_weight_names(model):
        yield weight.megatron, _shard_builder(weight, cfg)


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
    for weight in stage_weight_names(model):
        if weight.tied_copy:
            continue
        t = p[weight.megatron]
        full = _replicated(t) if weight.tp_dim is None else _gather(t, weight.tp_dim)
        out.update(zip(weight.hf, to_hf(weight, full, cfg, tp), strict=True))
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
