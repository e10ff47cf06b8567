"""Megatron policy shards -> HF-named full tensors, streamed in buckets (the refit's data path).

Plan. Every Megatron parameter of this pipeline stage becomes a `_Unit`: its entry of the weight-name table
(primeflow.models.weight_names, shared with HF import and export: how its TP shards join and which HF
tensors it turns into) and its wire dtype (the vLLM engine's, so an fp32-trained policy feeding a bf16 engine
moves bf16 bytes). Units are grouped, in the table's order, into buckets of about
`bucket_mb` MiB of full (gathered) HF tensors of one dtype. With PP > 1 the stages exchange their bucket
lists (names, shapes, dtypes: metadata only) so every rank knows the whole plan; then the plan is checked
against the tensors the vLLM engine expects (its checkpoint's names and shapes) *before anything is
moved*, so a missing, unexpected or mis-shaped tensor raises ValueError naming it and the engine keeps its
old weights.

Transfer, one bucket at a time (so no rank ever holds more than one bucket of full tensors besides its own
shards and vLLM's copy):
  1. TP: the owning stage's ranks flatten their shards of the bucket's sharded parameters into one buffer
     and all-gather it over the TP group (one collective per bucket); each rank rebuilds the full tensors.
  2. HF conversion (split q/k/v and gate/up, trim padded vocab rows).
  3. PP > 1: the owning stage packs the bucket's HF tensors into one flat buffer and broadcasts it over the
     PP group (one collective per bucket, source = the owning stage), so every stage's vLLM engine receives
     every layer: vLLM always runs the whole model (its own PP is 1), fed with full tensors that its weight
     loaders slice for vLLM's TP rank. This is also what makes trainer TP != vLLM TP work.
  4. The tensors are yielded as (HF name, tensor) pairs; the bucket's buffers are released when the
     consumer (vLLM's loader) has copied them. Buffers are never reused in place: vLLM's layerwise reload
     may hold a tensor until every weight of that vLLM layer has arrived.
All ranks of a TP group and of a PP group walk the same plan in the same order, so the collectives match.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from primeflow.models.weight_names import WeightName, hf_tensor_shapes, stage_weight_names, to_hf

_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass(frozen=True)
class _Unit:
    """One Megatron parameter of this stage and the HF tensors it becomes."""

    weight: WeightName
    dtype: torch.dtype

    @property
    def hf_bytes(self) -> int:
        return sum(_numel(s) for s in self.weight.hf_shapes) * _itemsize(self.dtype)


@dataclass(frozen=True)
class Bucket:
    """A group of tensors moved with one TP all-gather and (PP > 1) one PP broadcast."""

    stage: int                                       # PP stage that owns (holds) these parameters
    dtype: torch.dtype
    hf: tuple[tuple[str, tuple[int, ...]], ...]      # (HF name, full shape) in feed order
    units: tuple[_Unit, ...] = ()                    # only on the owning stage's ranks

    @property
    def nbytes(self) -> int:
        return sum(_numel(s) for _, s in self.hf) * _itemsize(self.dtype)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def stage_units(model, wire_dtype: torch.dtype | None = None) -> list[_Unit]:
    """This pipeline stage's parameters as `_Unit`s, in the table's order (embedding, layers, final norm,
    head). Tied embeddings: vLLM ties lm_head to embed_tokens itself; the last stage's copy (PP > 1) is not
    sent. wire_dtype: the dtype the weights travel and arrive in (the engine's: vLLM casts to it on load
    anyway, so sending fp32 masters to a bf16 engine would move twice the bytes for nothing); None = each
    parameter's own dtype."""
    params = dict(model.named_parameters())
    units: list[_Unit] = []
    for weight in stage_weight_names(model):
        if weight.tied_copy:
            continue
        if weight.megatron not in params:
            raise ValueError(f"weight sync: the policy model has no parameter {weight.megatron!r} (needed for "
                             f"{list(weight.hf)}); model/spec mismatch")
        units.append(_Unit(weight, wire_dtype or params[weight.megatron].dtype))
    return units


def make_buckets(units: list[_Unit], stage: int, bucket_bytes: int) -> list[Bucket]:
    """Greedy grouping in order: a bucket closes when adding the next unit would pass `bucket_bytes` (a unit
    larger than that travels alone) or the dtype changes."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket size must be > 0 bytes, got {bucket_bytes}")
    buckets: list[Bucket] = []
    current: list[_Unit] = []

    def close() -> None:
        if current:
            hf = tuple((n, s) for u in current for n, s in zip(u.weight.hf, u.weight.hf_shapes, strict=True))
            buckets.append(Bucket(stage, current[0].dtype, hf, tuple(current)))
            current.clear()

    size = 0
    for unit in units:
        if current and (size + unit.hf_bytes > bucket_bytes or unit.dtype != current[0].dtype):
            close()
            size = 0
        current.append(unit)
        size += unit.hf_bytes
    close()
    return buckets


def global_plan(model, bucket_bytes: int, wire_dtype: torch.dtype | None = None) -> list[Bucket]:
    """Every stage's buckets in stage order (metadata exchanged over the PP group when PP > 1); this stage's
    buckets carry their units. wire_dtype: see `stage_units`."""
    from megatron.core import parallel_state as ps
    from primeflow.trainer.parallel import pp_group

    pp = ps.get_pipeline_model_parallel_world_size()
    stage = ps.get_pipeline_model_parallel_rank()
    mine = make_buckets(stage_units(model, wire_dtype), stage, bucket_bytes)
    if pp == 1:
        return mine
    meta = [(b.stage, str(b.dtype).removeprefix("torch."), b.hf) for b in mine]
    gathered: list = [None] * pp
    dist.all_gather_object(gathered, meta, group=pp_group())
    plan: list[Bucket] = []
    for s, stage_meta in enumerate(gathered):
        if s == stage:
            plan += mine
        else:
            plan += [Bucket(st, getattr(torch, dt), tuple((n, tuple(sh)) for n, sh in hf))
                     for st, dt, hf in stage_meta]
    return plan


def check_plan(plan: list[Bucket], expected: dict[str, tuple[int, ...]]) -> None:
    """The plan must provide exactly the tensors the vLLM engine was built with, with the same shapes."""
    have: dict[str, tuple[int, ...]] = {}
    for b in plan:
        for name, shape in b.hf:
            if name in have:
                raise ValueError(f"weight sync: tensor {name!r} is produced twice (two pipeline stages hold it)")
            have[name] = tuple(shape)
    missing = [n for n in expected if n not in have]
    if missing:
        raise ValueError(f"weight sync: the policy model does not provide tensor {missing[0]!r} that the vLLM "
                         f"engine's checkpoint has ({len(missing)} missing: {missing[:6]}"
                         f"{' ...' if len(missing) > 6 else ''}); nothing was loaded")
    extra = [n for n in have if n not in expected]
    if extra:
        raise ValueError(f"weight sync: the policy model provides tensor {extra[0]!r} that the vLLM engine's "
                         f"checkpoint does not have ({len(extra)} unexpected: {extra[:6]}); nothing was loaded")
    for name, shape in expected.items():
        if tuple(have[name]) != tuple(shape):
            raise ValueError(f"weight sync: tensor {name!r} has shape {list(have[name])} in the policy model but "
                             f"{list(shape)} in the vLLM engine's checkpoint; nothing was loaded")


def expected_tensors(model_path) -> dict[str, tuple[int, ...]]:
    """HF tensor names and shapes of the checkpoint at `model_path` (safetensors headers only), minus entries
    vLLM ignores (RoPE buffers; lm_head of a tied-embedding model). A directory with only config.json (an
    engine built with vllm_kwargs={"load_format": "dummy"}, as the refit benchmark does) gets the set that
    config implies (primeflow.models.weight_names.hf_tensor_shapes)."""
    import json
    from pathlib import Path

    from safetensors import safe_open

    path = Path(model_path)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        from primeflow.models import ModelConfig

        return dict(hf_tensor_shapes(ModelConfig.from_hf(path)))
    out: dict[str, tuple[int, ...]] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            for name in h.keys():
                if not name.endswith(_IGNORED_SUFFIXES):
                    out[name] = tuple(h.get_slice(name).get_shape())
    cfg = json.loads((path / "config.json").read_text())
    if cfg.get("tie_word_embeddings", False):
        out.pop("lm_head.weight", None)
    return out


def _gather_tp(bucket: Bucket, params: dict[str, torch.Tensor], tp: int, group) -> dict[str, torch.Tensor]:
    """Full Megatron tensors of the bucket's units (one all-gather of the flattened shards over TP)."""
    full: dict[str, torch.Tensor] = {}
    sharded = [u for u in bucket.units if u.weight.tp_dim is not None and tp > 1]
    for u in bucket.units:  # cast to the unit's wire dtype before any collective (a no-op when equal)
        if u not in sharded:
            full[u.weight.megatron] = params[u.weight.megatron].detach().to(u.dtype)
    if not sharded:
        return full
    local = [params[u.weight.megatron].detach().to(u.dtype) for u in sharded]
    send = torch.cat([t.reshape(-1) for t in local])
    if dist.get_backend(group) == "nccl":
        recv_flat = torch.empty(tp * send.numel(), dtype=send.dtype, device=send.device)
        dist.all_gather_into_tensor(recv_flat, send, group=group)
        recv = list(recv_flat.chunk(tp))
    else:
        recv = [torch.empty_like(send) for _ in range(tp)]
        dist.all_gather(recv, send, group=group)
    del send
    offset = 0
    for u, t in zip(sharded, local, strict=True):
        n = t.numel()
        parts = [r[offset:offset + n].view(t.shape) for r in recv]
        full[u.weight.megatron] = torch.cat(parts, dim=u.weight.tp_dim)
        offset += n
    return full


def stream_hf_tensors(model, plan: list[Bucket], stats: dict[str, int]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (HF name, full tensor) for the whole model, bucket by bucket, on every rank (collective over
    the TP and PP groups: every rank must consume the iterator to the end). Adds bytes / tensors / buckets
    fed to `stats`."""
    from megatron.core import parallel_state as ps
    from primeflow.trainer.parallel import pp_group, tp_group

    cfg = model.model_config
    tp = ps.get_tensor_model_parallel_world_size()
    pp = ps.get_pipeline_model_parallel_world_size()
    stage = ps.get_pipeline_model_parallel_rank()
    params = dict(model.named_parameters())
    device = next(model.parameters()).device
    with torch.no_grad():
        for bucket in plan:
            tensors: list[torch.Tensor] = []
            if bucket.stage == stage:
                full = _gather_tp(bucket, params, tp, tp_group() if tp > 1 else None)
                for unit in bucket.units:
                    tensors += to_hf(unit.weight, full.pop(unit.weight.megatron), cfg, tp)
                del full
            if pp > 1:
                if bucket.stage == stage:
                    flat = torch.cat([t.reshape(-1) for t in tensors])
                else:
                    flat = torch.empty(sum(_numel(s) for _, s in bucket.hf), dtype=bucket.dtype, device=device)
                dist.broadcast(flat, group=pp_group(), group_src=bucket.stage)
                tensors, offset = [], 0
                for _, shape in bucket.hf:
                    n = _numel(shape)
                    tensors.append(flat[offset:offset + n].view(shape))
                    offset += n
                del flat
            stats["buckets"] += 1
            for (name, shape), t in zip(bucket.hf, tensors, strict=True):
                if tuple(t.shape) != tuple(shape):  # the plan and the conversion disagree: a bug, not input
                    raise RuntimeError(f"weight sync: built {name} with shape {list(t.shape)}, planned {list(shape)}")
                stats["bytes"] += t.numel() * t.element_size()
                stats["tensors"] += 1
                yield name, t
            del tensors
