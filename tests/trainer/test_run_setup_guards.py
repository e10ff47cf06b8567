"""Two guards of a run directory, checked before any model or engine starts:

* one trainer per run.dir: a second `primeflow train` on a directory another one holds exits 2 with one
  line naming the holder, and writes nothing there; the lock dies with its process (SIGKILL included), so a
  killed run never leaves a stale lock behind;
* run.dir/sft_model (the embedded default's SFT model) is reused only when the settings it was built from
  (recorded beside it) match the config: a fresh start rebuilds it, a resumed run refuses, naming what changed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from child_env import fresh_world_env
from primeflow.trainer.config import Config
from primeflow.trainer.run_lock import LOCK_NAME, RunDirInUse, lock_run_dir
from primeflow.trainer.run_setup import SFT_RECIPE, StaleSFTModel, _reusable_sft_model, _sft_recipe

_HOLD = ("import sys, time; from pathlib import Path; from primeflow.trainer.run_lock import lock_run_dir; "
         "h = lock_run_dir(Path(sys.argv[1]), is_rank0=True); print('held', flush=True); time.sleep(600)")


def _holder(run_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_run_dir_is_refused_and_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = _holder(tmp_path)
    try:
        with pytest.raises(RunDirInUse, match=f"in use by another primeflow train \\(pid {holder.pid} on "):
            lock_run_dir(tmp_path, is_rank0=True)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    handle = lock_run_dir(tmp_path, is_rank0=True)  # the kernel dropped the dead holder's lock
    assert (tmp_path / LOCK_NAME).read_text().startswith(f"pid {os.getpid()} on ")
    handle.close()


@pytest.mark.slow
def test_a_second_trainer_on_a_held_run_dir_exits_2_in_one_line_and_writes_nothing(tmp_path):
    holder = _holder(tmp_path)
    try:
        env = fresh_world_env()
        start = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "primeflow", "train", "--set", f"run.dir={tmp_path}"],
                              capture_output=True, text=True, timeout=600, env=env)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("primeflow train:")]
    assert errors == [errors[0]] and "is in use by another primeflow train" in errors[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME]  # no config.yaml, no metrics, no model
    assert time.monotonic() - start < 300


def _run():
    return SimpleNamespace(console=SimpleNamespace(print=lambda message: None),
                           layout=SimpleNamespace(is_rank0=True))


def _sft_dir(tmp_path: Path, recipe: dict | None) -> Path:
    sft = tmp_path / "sft_model"
    sft.mkdir()
    (sft / "config.json").write_text("{}")
    if recipe is not None:
        (sft / SFT_RECIPE).write_text(json.dumps(recipe))
    return sft


def test_an_sft_model_built_from_these_settings_is_reused(tmp_path):
    recipe = _sft_recipe(Config())
    assert _reusable_sft_model(_run(), _sft_dir(tmp_path, recipe), recipe, resuming=True)


def test_changed_sft_settings_rebuild_on_a_fresh_start_and_are_refused_on_resume(tmp_path):
    old = _sft_recipe(Config())
    config = Config()
    config.sft.steps = 12
    new = _sft_recipe(config)
    sft = _sft_dir(tmp_path, old)
    with pytest.raises(StaleSFTModel, match=r"sft\.steps: 350 -> 12.*keep the old values, or start a new run\.dir"):
        _reusable_sft_model(_run(), sft, new, resuming=True)
    assert (sft / "config.json").is_file()  # refused: nothing touched
    assert not _reusable_sft_model(_run(), sft, new, resuming=False)
    assert not sft.exists() and sorted(p.name for p in tmp_path.iterdir()) == []  # removed, to be rebuilt


def test_an_sft_model_without_a_recorded_recipe_is_reused_as_before(tmp_path):
    assert _reusable_sft_model(_run(), _sft_dir(tmp_path, None), _sft_recipe(Config()), resuming=False)


def test_the_built_in_task_is_part_of_the_sft_recipe(tmp_path):
    config = Config()
    config.data.task = "arithmetic"
    arithmetic = _sft_recipe(config)
    assert "data.task" not in arithmetic and "data.arithmetic" in arithmetic  # the recipe's original shape
    chain = _sft_recipe(Config())  # the embedded default's task
    assert chain["data.task"] == "chain" and chain["data.chain"] == {"steps": 4, "digits": 1, "ops": ["+", "-", "*"]}
    with pytest.raises(StaleSFTModel, match=r"data\.task: None -> 'chain'"):
        _reusable_sft_model(_run(), _sft_dir(tmp_path, arithmetic), chain, resuming=True)
