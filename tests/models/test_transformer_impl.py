"""model.transformer_impl: the one switch between Megatron's local layers and Transformer Engine's.

Transformer Engine does not install on these CPU hosts, so what is proven here is the switch (auto picks local
off CUDA and without TE; an explicit request that cannot be met raises naming the key), the weight names each
implementation's modules carry (local: read from a real built model; TE: the names megatron-core's TE layer
spec gives its fused norm-linear modules, the rest of the table unchanged), and that a checkpoint refuses to
load into the other implementation. The TE model itself runs only on a GPU with TE (bench/RUNBOOK_GPU.md).
"""

from __future__ import annotations

import pytest
from primeflow.models.config import ModelConfig
from primeflow.models.transformer_impl import resolve_transformer_impl, transformer_engine_available
from primeflow.models.weight_names import norm_names, weight_names


@pytest.fixture(scope="module")
def cfg(tiny_qwen2) -> ModelConfig:
    return ModelConfig.from_hf(tiny_qwen2)


def test_auto_is_local_off_cuda_and_local_is_always_local():
    assert resolve_transformer_impl("auto", "cpu") == "local"
    assert resolve_transformer_impl("local", "cuda") == "local"
    if not transformer_engine_available():
        assert resolve_transformer_impl("auto", "cuda") == "local"


def test_requests_that_cannot_be_met_name_the_key():
    with pytest.raises(ValueError, match=r"model.transformer_impl='te' is not allowed; allowed: \['auto', 'local', "
                                         r"'transformer_engine'\]"):
        resolve_transformer_impl("te", "cpu")
    with pytest.raises(ValueError, match="needs a CUDA device, this model is on 'cpu'"):
        resolve_transformer_impl("transformer_engine", "cpu")
    if not transformer_engine_available():
        with pytest.raises(ValueError, match=r"transformer_engine does not import: install the GPU extra"):
            resolve_transformer_impl("transformer_engine", "cuda")


def test_te_names_move_only_the_two_norms_into_the_fused_linears(cfg):
    local, te = weight_names(cfg), weight_names(cfg, transformer_impl="transformer_engine")
    assert [(w.hf, w.layout) for w in local] == [(w.hf, w.layout) for w in te]  # same HF tensors and layouts
    moved = {a.megatron: b.megatron for a, b in zip(local, te, strict=True) if a.megatron != b.megatron}
    want = {}
    for i in range(cfg.num_layers):
        layer = f"decoder.layers.{i}."
        want[layer + "input_layernorm.weight"] = layer + "self_attention.linear_qkv.layer_norm_weight"
        want[layer + "pre_mlp_layernorm.weight"] = layer + "mlp.linear_fc1.layer_norm_weight"
    assert moved == want
    # the HF side of the moved names: input_layernorm and post_attention_layernorm, in that order per layer
    by_name = {w.megatron: w.hf for w in te}
    assert by_name["decoder.layers.1.mlp.linear_fc1.layer_norm_weight"] == (
        "model.layers.1.post_attention_layernorm.weight",)
    with pytest.raises(ValueError, match="not a resolved implementation"):
        norm_names("auto")


def test_local_names_are_the_built_models_parameters(world, cfg):
    """The local table is what a real built model holds (the TE table differs from it only as above)."""
    from primeflow.models import build_model
    from primeflow.models.weight_names import stage_weight_names

    model = build_model(cfg, role="policy", transformer_impl="auto")
    assert model.transformer_impl == "local"
    assert {w.megatron for w in stage_weight_names(model)} == {n for n, _ in model.named_parameters()}


def test_a_checkpoint_loads_only_into_the_implementation_it_was_saved_with(tmp_path):
    import torch
    from primeflow.trainer.checkpointing.errors import CheckpointError
    from primeflow.trainer.checkpointing.manager import _check_transformer_impl, _model_meta

    local = torch.nn.Linear(2, 2)
    local.transformer_impl = "local"
    te = torch.nn.Linear(2, 2)
    te.transformer_impl = "transformer_engine"
    manifest = {"models": {"policy": _model_meta(te)}}
    assert manifest["models"]["policy"]["transformer_impl"] == "transformer_engine"
    _check_transformer_impl(tmp_path, manifest, {"policy": te})
    with pytest.raises(CheckpointError, match="saved with transformer_impl='transformer_engine', this run builds "
                                              "it with 'local'; set model.transformer_impl=transformer_engine"):
        _check_transformer_impl(tmp_path, manifest, {"policy": local})
    # a manifest from before the key existed was written by the local layers
    _check_transformer_impl(tmp_path, {"models": {"policy": {"role": "policy"}}}, {"policy": local})
