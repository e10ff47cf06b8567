"""The HF <-> Megatron weight-name table (models/weight_names.py) that HF import, HF export and the vLLM
refit share: its Megatron side is exactly what build_model creates, its HF side exactly what transformers
creates, names round-trip over every pipeline split, and every layout's shards reassemble into the HF
tensors they were read from at TP = 1, 2 and 4 (the import and the export/refit halves of each layout)."""

from __future__ import annotations

from contextlib import ExitStack

import pytest
import torch
from primeflow.models import ModelConfig, build_model, make_tiny_checkpoint
from primeflow.models.weight_names import hf_tensor_shapes, stage_weight_names, to_hf, weight_names
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

VARIANTS = {
    "qwen2-untied-bias": dict(),
    "qwen2-tied-bias": dict(tie_word_embeddings=True),
    "llama-tied": dict(architecture="llama", tie_word_embeddings=True, vocab_size=320),
    "llama-untied": dict(architecture="llama"),
}  # with and without q/k/v biases (Llama's attention_bias also adds an o_proj bias the builder lacks)


@pytest.fixture(scope="module", params=list(VARIANTS))
def ckpt(request, tmp_path_factory):
    # 3 layers so pipeline splits can be uneven; 4 KV groups of 2 query heads so TP = 4 divides them (GQA)
    return make_tiny_checkpoint(tmp_path_factory.mktemp(request.param), seed=0, num_hidden_layers=3,
                                num_attention_heads=8, num_key_value_heads=4, **VARIANTS[request.param])


def _stages(cfg: ModelConfig, sizes: list[int]):
    """The table of each pipeline stage when the layers are split into consecutive runs of `sizes`."""
    starts = [sum(sizes[:s]) for s in range(len(sizes))]
    return [weight_names(cfg, {start + j: j for j in range(n)}, first_stage=s == 0, last_stage=s == len(sizes) - 1)
            for s, (start, n) in enumerate(zip(starts, sizes, strict=True))]


def test_megatron_side_is_every_parameter_build_model_makes(world, ckpt):
    cfg = ModelConfig.from_hf(ckpt)
    model = build_model(cfg, role="policy")
    params = dict(model.named_parameters())
    table = stage_weight_names(model)
    names = [w.megatron for w in table]
    assert sorted(names) == sorted(params) and len(set(names)) == len(names)
    for w in table:  # TP = 1: qkv / fc1 stack their HF tensors' rows; the vocabulary is not padded
        rows = sum(s[0] for s in w.hf_shapes) if w.layout in ("qkv", "fc1") else w.hf_shapes[0][0]
        assert tuple(params[w.megatron].shape) == (rows, *w.hf_shapes[0][1:]), w.megatron


def test_hf_side_is_every_parameter_transformers_makes(ckpt):
    with torch.device("meta"):  # names and shapes only
        hf = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(ckpt))
    # named_parameters lists a tied lm_head once, as embed_tokens: the table must not name it either
    want = {n: tuple(p.shape) for n, p in hf.named_parameters()}
    assert hf_tensor_shapes(ModelConfig.from_hf(ckpt)) == want


@pytest.mark.parametrize("sizes", [[3], [1, 2], [2, 1], [1, 1, 1]], ids=["pp1", "pp2a", "pp2b", "pp3"])
def test_names_round_trip_over_pipeline_splits(ckpt, sizes):
    cfg = ModelConfig.from_hf(ckpt)
    stages = _stages(cfg, sizes)
    to_megatron: dict[str, tuple[int, str]] = {}
    for s, table in enumerate(stages):
        megatron = [w.megatron for w in table]
        assert len(set(megatron)) == len(megatron), s
        local = {int(n.split(".")[2]) for n in megatron if n.startswith("decoder.layers.")}
        assert local == set(range(sizes[s]))  # layer indices are local to the stage
        for w in table:
            for name in w.hf:
                if not w.tied_copy:
                    assert name not in to_megatron, f"{name} held by two parameters"
                    to_megatron[name] = (s, w.megatron)
    # every HF tensor comes from exactly one (stage, parameter), and maps back to the same HF names
    assert set(to_megatron) == set(hf_tensor_shapes(cfg))
    for name, (s, megatron) in to_megatron.items():
        assert name in next(w.hf for w in stages[s] if w.megatron == megatron)
    copies = [w for table in stages for w in table if w.tied_copy]
    if cfg.tie_word_embeddings and len(sizes) > 1:  # the last stage loads its head from the embedding
        assert [(w.megatron, w.hf) for w in copies] == [("output_layer.weight", ("model.embed_tokens.weight",))]
        assert copies[0] in stages[-1]
    else:
        assert copies == []


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_every_layout_reassembles_the_hf_tensors(ckpt, tp):
    """Import reads each rank's shard from the file; export and refit concatenate the shards along tp_dim
    and convert back: that must give the file's tensors bitwise, with Megatron's shard shapes on the way."""
    from primeflow.models.hf_checkpoint import _HFReader, _shard_builder

    cfg = ModelConfig.from_hf(ckpt)
    stored = load_file(str(ckpt / "model.safetensors"))
    stages = _stages(cfg, [2, 1])  # PP = 2: includes the tied head copy of a tied model
    with ExitStack() as stack:
        reader = _HFReader(ckpt, stack)
        for w in (w for table in stages for w in table):
            build = _shard_builder(w, cfg)
            shards = [build(reader, rank, tp) for rank in range(tp)]
            assert len({tuple(t.shape) for t in shards}) == 1, w.megatron  # equal shards on every rank
            if w.tp_dim is None:
                assert all(torch.equal(t, shards[0]) for t in shards)
                full = shards[0]
            else:
                full = torch.cat(shards, dim=w.tp_dim)
            if w.layout == "vocab":
                assert full.shape[0] == cfg.padded_vocab_size(tp)
                assert not full[cfg.vocab_size:].any()  # padding rows are zeros
            got = to_hf(w, full, cfg, tp)
            assert len(got) == len(w.hf)
            for name, shape, t in zip(w.hf, w.hf_shapes, got, strict=True):
                assert tuple(t.shape) == shape and torch.equal(t, stored[name]), (w.megatron, name, tp)


def test_to_hf_is_not_the_identity_for_interleaved_layouts(ckpt):
    """The round trip above must not pass because both halves do nothing: at TP = 2 Megatron's qkv rows
    are grouped per KV group and its fc1 rows interleave gate and up per rank, unlike HF's plain stacking."""
    from primeflow.models.hf_checkpoint import _HFReader, _shard_builder

    cfg = ModelConfig.from_hf(ckpt)
    stored = load_file(str(ckpt / "model.safetensors"))
    layer0 = {w.layout: w for w in weight_names(cfg) if w.megatron.startswith("decoder.layers.0.")}
    with ExitStack() as stack:
        reader = _HFReader(ckpt, stack)
        for layout in ("qkv", "fc1"):
            w = layer0[layout]
            full = torch.cat([_shard_builder(w, cfg)(reader, r, 2) for r in range(2)])
            assert not torch.equal(full, torch.cat([stored[n] for n in w.hf])), layout
