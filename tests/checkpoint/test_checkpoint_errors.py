"""Bad checkpoints and bad arguments give errors that name the file / step / setting at fault."""

from __future__ import annotations

import json

import pytest
import torch
from primeflow.trainer.checkpointing import CheckpointError, CheckpointManager


def _set(width: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(width, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(5, width)).sum().backward()
    opt.step()
    return {"m": model}, {"m": opt}, {"m": torch.optim.lr_scheduler.StepLR(opt, 3)}


@pytest.fixture
def saved(tmp_path, seed):
    models, opts, scheds = _set(seed=seed)
    mgr = CheckpointManager(tmp_path)
    path = mgr.save(7, models=models, optimizers=opts, schedulers=scheds, trainer_state={"k": [1, 2]})
    return mgr, path


def _load(mgr, what=7, **kw):
    models, opts, scheds = _set(seed=1)
    return mgr.load(what, models=kw.pop("models", models), optimizers=kw.pop("optimizers", opts),
                    schedulers=kw.pop("schedulers", scheds), **kw)


def test_sound_checkpoint_loads(saved):
    assert _load(saved[0]) == {"k": [1, 2]}


def test_missing_file_is_named(saved):
    mgr, path = saved
    (path / "optim.m.tp00-pp00.pt").unlink()
    with pytest.raises(CheckpointError, match=r"optim\.m\.tp00-pp00\.pt: missing checkpoint file"):
        _load(mgr)


def test_missing_manifest_and_corrupted_manifest(saved):
    mgr, path = saved
    text = (path / "manifest.json").read_text()
    (path / "manifest.json").write_text(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match=r"manifest\.json: corrupted manifest"):
        _load(mgr)
    (path / "manifest.json").write_text(json.dumps({"format": "primeflow-checkpoint/1"}))
    with pytest.raises(CheckpointError, match=r"manifest\.json: corrupted manifest \(needs keys"):
        _load(mgr)
    (path / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match=r"manifest\.json: missing"):
        _load(mgr)
    assert mgr.latest() is None  # and it no longer counts as a checkpoint


def test_altered_bytes_and_truncation_are_detected(saved):
    mgr, path = saved
    f = path / "model.m.tp00-pp00.pt"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, same size: only the hash can tell
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.m\.tp00-pp00\.pt: sha256 differs"):
        _load(mgr)
    f.write_bytes(bytes(data[:-10]))
    with pytest.raises(CheckpointError, match=r"model\.m\.tp00-pp00\.pt: size \d+ bytes, manifest says"):
        _load(mgr, verify="size")


def test_layout_mismatch_is_explained(saved):
    mgr, path = saved
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["layout"] = {"world_size": 2, "tp": 2, "pp": 1, "dp": 1}
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"saved with layout tp=2 pp=1 dp=1 \(world 2\), this run has "
                                              r"tp=1 pp=1 dp=1 \(world 1\); \['m'\] are plain torch modules.*"
                                              r"resharding a checkpoint is not supported for them"):
        _load(mgr)


def test_component_and_shape_mismatches(saved):
    mgr, _ = saved
    models, opts, scheds = _set()
    with pytest.raises(CheckpointError, match=r"saved models \['m'\], asked to load \['m', 'x'\]"):
        _load(mgr, models={**models, "x": models["m"]})
    with pytest.raises(CheckpointError, match=r"saved optimizers \['m'\], asked to load \[\]"):
        _load(mgr, optimizers={})
    wide, wide_opts, wide_scheds = _set(width=5)
    with pytest.raises(CheckpointError, match=r"(?s)model\.m\.tp00-pp00\.pt: does not fit model 'm'.*size mismatch"):
        _load(mgr, models=wide, optimizers=wide_opts, schedulers=wide_scheds)
    with pytest.raises(CheckpointError, match=r"saved generators \[\], asked to load \['g'\]"):
        _load(mgr, generators={"g": torch.Generator()})
    with pytest.raises(CheckpointError, match="no complete checkpoint|missing"):
        _load(mgr, what=8)


def test_bad_arguments(tmp_path):
    models, opts, scheds = _set()
    with pytest.raises(ValueError, match="keep_last must be a positive integer or None"):
        CheckpointManager(tmp_path, keep_last=0)
    mgr = CheckpointManager(tmp_path)
    with pytest.raises(CheckpointError, match="trainer_state must be JSON-serializable"):
        mgr.save(1, models=models, optimizers=opts, schedulers=scheds, trainer_state={"t": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="trainer_state must be a dict, got list"):
        mgr.save(1, models=models, optimizers=opts, schedulers=scheds, trainer_state=[1])
    with pytest.raises(ValueError, match="step must be a non-negative int"):
        mgr.save(-1, models=models, optimizers=opts, schedulers=scheds, trainer_state={})
    with pytest.raises(ValueError, match=r"models key 'pol/icy' is not allowed"):
        mgr.save(1, models={"pol/icy": models["m"]}, optimizers=opts, schedulers=scheds, trainer_state={})
    with pytest.raises(ValueError, match=r"verify='md5' is not allowed; allowed: \['sha256', 'size'\]"):
        mgr.load(1, models=models, optimizers=opts, schedulers=scheds, verify="md5")
    mgr.save(1, models=models, optimizers=opts, schedulers=scheds, trainer_state={}, rng=False)
    with pytest.raises(CheckpointError, match=r"saved without RNG states"):
        mgr.load(1, models=models, optimizers=opts, schedulers=scheds)
    assert mgr.load(1, models=models, optimizers=opts, schedulers=scheds, rng=False) == {}
    assert not list(mgr.dir.glob(".tmp-*"))  # the failed saves above left nothing behind either


def test_resume_auto_refuses_to_start_over_when_every_checkpoint_is_damaged(saved, tmp_path):
    """Starting fresh would overwrite the run's metrics and checkpoints: with checkpoints present and none
    usable, `auto` raises naming each one and why (and how to start fresh on purpose)."""
    mgr, path = saved
    assert mgr.resolve("auto") == path
    (path / "model.m.tp00-pp00.pt").write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match=r"none is usable \(step_7: file model\.m\.tp00-pp00\.pt missing or "
                                              r"of the wrong size\).*--resume none"):
        mgr.resolve("auto")
    assert mgr.resolve("none") is None
    assert CheckpointManager(tmp_path / "fresh").resolve("auto") is None  # no checkpoints at all: fresh start


def test_resume_auto_falls_back_to_the_newest_usable_checkpoint(saved):
    mgr, path = saved
    models, opts, scheds = _set(seed=2)
    newer = mgr.save(9, models=models, optimizers=opts, schedulers=scheds, trainer_state={"k": 9})
    (newer / "manifest.json").write_text("{")
    assert mgr.resolve("auto") == path
    assert [p.name for p, _ in mgr.unusable()] == ["step_9"]


def test_leftovers_of_interrupted_saves_are_removed_but_checkpoints_kept(saved):
    mgr, path = saved
    (mgr.dir / ".tmp-step_8-abc").mkdir()
    (mgr.dir / ".tmp-step_8-abc" / "model.m.tp00-pp00.pt").write_bytes(b"x" * 1000)
    (mgr.dir / ".trash-step_3-def").mkdir()
    assert sorted(mgr.remove_leftovers()) == [".tmp-step_8-abc", ".trash-step_3-def"]
    assert sorted(p.name for p in mgr.dir.iterdir()) == ["step_7"] and mgr.resolve("auto") == path
