"""CheckpointManager in one process (a 1-rank world from trainer.parallel) with real Megatron models:
save -> load into freshly built models is bitwise (params, AdamW states, schedulers, RNG streams, trainer
state), training continues identically, the manifest describes the files, keep_last prunes, and
latest()/resolve() skip anything incomplete."""

from __future__ import annotations

import hashlib
import random
import shutil

import numpy as np
import pytest
import torch
from primeflow.trainer.checkpointing import CheckpointError, CheckpointManager, read_manifest


@pytest.fixture
def trained(world, tiny_ckpt, ckpt_helpers, seed):
    """Policy + PRM after two AdamW steps on random data (so optimizer moments are non-trivial)."""
    h = ckpt_helpers
    models, opts, scheds = h.build_set(tiny_ckpt, init_seed=seed)
    vocab = models["policy"].model_config.vocab_size
    for i in range(2):
        h.train_step(models, opts, scheds, seed=seed + i, vocab=vocab)
    return models, opts, scheds, vocab


def _trainer_state(seed: int) -> dict:
    r = random.Random(seed)
    return {"dataloader": {"epoch": 1, "cursor": r.randrange(1000), "order": [r.randrange(50) for _ in range(7)]},
            "refill_buffer": [{"prompt_id": r.randrange(10**6), "text": "1+2=", "answer": "3"}],
            "counters": {"samples": r.randrange(10**9), "ema": r.random()}}


def test_save_load_is_bitwise_and_training_continues_identically(trained, tiny_ckpt, ckpt_helpers, tmp_path,
                                                                 seed):
    h = ckpt_helpers
    models, opts, scheds, vocab = trained
    gen = torch.Generator().manual_seed(seed + 7)
    random.gauss(0, 1)
    np.random.randn()  # leaves a cached Gaussian in both generators: it must survive the round trip too
    state = _trainer_state(seed)
    mgr = CheckpointManager(tmp_path / "run")
    path = mgr.save(2, models=models, optimizers=opts, schedulers=scheds, trainer_state=state,
                    generators={"data": gen})
    assert path == tmp_path / "run" / "checkpoints" / "step_2" and mgr.latest() == 2
    before = h.snapshot(models, opts, scheds)
    streams = h.draw_streams(gen)
    h.train_step(models, opts, scheds, seed=seed + 100, vocab=vocab)
    continued = h.snapshot(models, opts, scheds)

    h.perturb_streams(gen)
    fresh, fresh_opts, fresh_scheds = h.build_set(tiny_ckpt, init_seed=seed + 1, load=False)
    # The target really differs before loading (else equality below would prove nothing).
    w = "embedding.word_embeddings.weight"
    assert not torch.equal(dict(fresh["policy"].named_parameters())[w], before["params"]["policy"][w])
    gen2 = torch.Generator().manual_seed(12345)
    loaded_state = mgr.load(2, models=fresh, optimizers=fresh_opts, schedulers=fresh_scheds,
                            generators={"data": gen2})
    assert loaded_state == state
    assert h.assert_snapshots_equal(h.snapshot(fresh, fresh_opts, fresh_scheds), before) > 50
    assert h.draw_streams(gen2) == streams
    h.train_step(fresh, fresh_opts, fresh_scheds, seed=seed + 100, vocab=vocab)
    h.assert_snapshots_equal(h.snapshot(fresh, fresh_opts, fresh_scheds), continued)


def test_manifest_lists_every_file_with_size_and_hash(trained, tmp_path):
    models, opts, scheds, _ = trained
    path = CheckpointManager(tmp_path / "run").save(5, models=models, optimizers=opts, schedulers=scheds,
                                                    trainer_state={"x": 1})
    manifest = read_manifest(path)
    assert manifest["step"] == 5
    assert manifest["layout"] == {"world_size": 1, "tp": 1, "pp": 1, "dp": 1}
    assert manifest["components"]["models"] == ["policy", "prm"]
    on_disk = {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk
    for name, entry in manifest["files"].items():
        data = (path / name).read_bytes()
        assert entry["size"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest(), name
    # What export needs to rebuild each model: its ModelConfig, role, dtype and the HF side files.
    for role in ("policy", "prm"):
        meta = manifest["models"][role]
        assert meta["role"] == role and meta["params_dtype"] == "float32"
        assert meta["model_config"]["hidden_size"] == models[role].model_config.hidden_size
        assert (path / "hf" / role / "tokenizer.json").is_file() and (path / "hf" / role / "config.json").is_file()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind


def _tiny_set():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return {"m": model}, {"m": opt}, {"m": torch.optim.lr_scheduler.StepLR(opt, 3)}


def test_keep_last_prunes_oldest_but_never_the_checkpoint_just_written(tmp_path):
    models, opts, scheds = _tiny_set()
    mgr = CheckpointManager(tmp_path, keep_last=2)
    for step in (1, 2, 3, 4, 5):
        mgr.save(step, models=models, optimizers=opts, schedulers=scheds, trainer_state={"s": step})
    assert mgr.steps() == [4, 5]
    # A resume from step 3 after discarding the abandoned steps writes 4 again; it replaces the old one.
    assert mgr.discard_after(3) == [4, 5] and mgr.steps() == []
    mgr.save(4, models=models, optimizers=opts, schedulers=scheds, trainer_state={"s": "again"})
    mgr.save(4, models=models, optimizers=opts, schedulers=scheds, trainer_state={"s": "replaced"})
    assert mgr.steps() == [4] and mgr.load(4, models=models, optimizers=opts, schedulers=scheds) == {"s": "replaced"}
    # Writing an older step than the newest kept ones: the newest stays and so does the one just written.
    mgr.save(9, models=models, optimizers=opts, schedulers=scheds, trainer_state={})
    mgr.save(2, models=models, optimizers=opts, schedulers=scheds, trainer_state={})
    assert mgr.steps() == [2, 9]
    keep_all = CheckpointManager(tmp_path / "all", keep_last=None)
    for step in range(4):
        keep_all.save(step, models=models, optimizers=opts, schedulers=scheds, trainer_state={})
    assert keep_all.steps() == [0, 1, 2, 3]


def test_latest_and_resolve_ignore_partial_directories(tmp_path):
    models, opts, scheds = _tiny_set()
    mgr = CheckpointManager(tmp_path / "run", keep_last=None)
    assert mgr.latest() is None and mgr.resolve("auto") is None and mgr.resolve("none") is None
    for step in (3, 6):
        mgr.save(step, models=models, optimizers=opts, schedulers=scheds, trainer_state={"s": step})
    d = mgr.dir
    shutil.copytree(d / "step_6", d / ".tmp-step_9-abc")          # an interrupted save
    shutil.copytree(d / "step_6", d / ".trash-step_1-abc")        # an interrupted deletion
    (d / "step_8").mkdir()                                          # no manifest
    shutil.copytree(d / "step_6", d / "step_7")                     # manifest names another step
    shutil.copytree(d / "step_6", d / "step_10")
    (d / "step_10" / "model.m.tp00-pp00.pt").unlink()               # a file missing
    shutil.copytree(d / "step_6", d / "step_11")
    with open(d / "step_11" / "optim.m.tp00-pp00.pt", "ab") as f:  # a file of the wrong size
        f.write(b"x")
    (d / "step_12").write_text("not a directory")
    assert mgr.steps() == [3, 6] and mgr.latest() == 6
    assert mgr.resolve("auto") == d / "step_6"
    assert mgr.resolve(3) == d / "step_3" and mgr.resolve("3") == d / "step_3"
    assert mgr.resolve(str(d / "step_3")) == d / "step_3"
    assert mgr.resolve(tmp_path / "run") == d / "step_6"            # another run directory: its latest
    with pytest.raises(CheckpointError, match=r"available steps: \[3, 6\]"):
        mgr.resolve(10)
    with pytest.raises(CheckpointError, match="expected 'auto', 'none'"):
        mgr.resolve(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="resume=True"):
        mgr.resolve(True)
    # The next save deletes the leftovers of interrupted saves and deletions (and nothing else).
    mgr.save(13, models=models, optimizers=opts, schedulers=scheds, trainer_state={})
    names = sorted(p.name for p in d.iterdir())
    assert names == ["step_10", "step_11", "step_12", "step_13", "step_3", "step_6", "step_7", "step_8"]
    assert mgr.latest() == 13
