"""HF export of a run checkpoint (export_hf and `primeflow export`): the exported policy and PRM equal the
trained models tensor for tensor, carry the tokenizer, and load in transformers."""

from __future__ import annotations

import pytest
import torch
from primeflow.models import hf_state_dict
from primeflow.trainer.checkpointing import CheckpointError, CheckpointManager, export_hf
from primeflow.trainer.export import main as export_main
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer


@pytest.fixture
def run(world, tiny_ckpt, ckpt_helpers, tmp_path, seed):
    h = ckpt_helpers
    models, opts, scheds = h.build_set(tiny_ckpt, init_seed=seed)
    h.train_step(models, opts, scheds, seed=seed, vocab=models["policy"].model_config.vocab_size)
    mgr = CheckpointManager(tmp_path / "run")
    mgr.save(3, models=models, optimizers=opts, schedulers=scheds, trainer_state={})
    h.train_step(models, opts, scheds, seed=seed + 1, vocab=models["policy"].model_config.vocab_size)
    mgr.save(4, models=models, optimizers=opts, schedulers=scheds, trainer_state={})
    return tmp_path / "run", {role: hf_state_dict(m) for role, m in models.items()}


def test_export_equals_trained_weights_and_loads_in_transformers(run, tiny_ckpt, tmp_path, seed):
    run_dir, want = run
    out = export_hf(run_dir, None, tmp_path / "hf")  # None: the latest checkpoint (step 4)
    assert set(out) == {"policy", "prm"}
    for role, path in out.items():
        got = load_file(str(path / "model.safetensors"))
        assert got.keys() == want[role].keys()
        for name in got:
            assert torch.equal(got[name], want[role][name]), f"{role}: {name}"
        assert (path / "tokenizer.json").read_bytes() == (tiny_ckpt / "tokenizer.json").read_bytes()
        hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        assert torch.equal(hf.model.embed_tokens.weight.detach(), want[role]["model.embed_tokens.weight"])
        assert AutoTokenizer.from_pretrained(str(path)).encode("12+3") == \
            AutoTokenizer.from_pretrained(str(tiny_ckpt)).encode("12+3")
    assert not [p for p in (tmp_path / "hf").iterdir() if p.name.startswith(".")]


def test_export_cli(run, tmp_path, capsys):
    run_dir, want = run
    assert export_main(["--run", str(run_dir), "--step", "3", "--models", "prm"]) == 0
    target = run_dir / "export" / "step_3" / "prm"
    assert capsys.readouterr().out.strip() == f"prm: {target}"
    got = load_file(str(target / "model.safetensors"))
    # step 3 is before the last update: it must differ from the final weights
    assert any(not torch.equal(got[n], want["prm"][n]) for n in got)
    assert export_main(["--run", str(run_dir), "--step", "3", "--models", "prm"]) == 1
    assert "already exists (pass overwrite=True / --force" in capsys.readouterr().err
    assert export_main(["--run", str(run_dir), "--step", "3", "--models", "prm", "--force"]) == 0
    assert export_main(["--run", str(run_dir), "--step", "9"]) == 1
    err = capsys.readouterr().err
    assert "no complete checkpoint" in err and "available steps: [3, 4]" in err, err


def test_export_errors(run, tmp_path):
    run_dir, _ = run
    with pytest.raises(CheckpointError, match=r"cannot export \['ref'\]; the checkpoint holds models \['policy', 'prm'\]"):  # noqa: E501
        export_hf(run_dir, 4, tmp_path / "x", models=["ref"])
    with pytest.raises(CheckpointError, match="no complete checkpoint to export"):
        export_hf(tmp_path / "empty_run", None, tmp_path / "y")
