"""How `primeflow train` ends when the run is interrupted or the disk fills, independent of where in the loop it
happens: `train()` is replaced by a stand-in that raises it (the real run: tests/trainer/test_train_console_run.py).

* Ctrl-C: exit 130 and one line saying what was saved (the last checkpoint's step, or nothing) and how to go on;
* a full disk outside a checkpoint (metrics.jsonl, curves.png, ...): exit 2 and one line naming the file.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from child_env import fresh_world_env

_MAIN = """
import errno, os, sys
from pathlib import Path
import torch
from primeflow.trainer import train as train_mod
from primeflow.trainer.checkpointing import CheckpointManager

run_dir, case = Path(sys.argv[1]), sys.argv[2]


def stand_in(config, on_stage=None):
    if case == "interrupt_after_a_checkpoint":
        model = torch.nn.Linear(2, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        CheckpointManager(run_dir).save(3, models={"m": model}, optimizers={"m": opt}, schedulers={},
                                        trainer_state={"step": 3})
    if case.startswith("interrupt"):
        raise KeyboardInterrupt
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(run_dir / "metrics.jsonl"))


train_mod.train = stand_in
sys.exit(train_mod.main(["--set", f"run.dir={run_dir}"]))
"""


def _main(run_dir, case: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _MAIN, str(run_dir), case], capture_output=True, text=True,
                          timeout=300, env=fresh_world_env())


def _one_line(done: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in done.stderr, done.stderr[-4000:]
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("primeflow train:")]
    return line


@pytest.mark.parametrize("case", ["interrupt_after_a_checkpoint", "interrupt_before_any"])
def test_ctrl_c_exits_130_saying_what_was_saved(tmp_path, case):
    done = _main(tmp_path, case)
    assert done.returncode == 130, done.stderr[-4000:]
    line = _one_line(done)
    assert line.startswith("primeflow train: interrupted"), line
    if case == "interrupt_after_a_checkpoint":
        assert f"step 3 ({tmp_path / 'checkpoints' / 'step_3'})" in line and "--resume auto" in line, line
    else:
        assert "no checkpoint" in line and "starts at step 1" in line, line


def test_a_full_disk_exits_2_naming_the_file(tmp_path):
    done = _main(tmp_path, "disk_full")
    assert done.returncode == 2, done.stderr[-4000:]
    line = _one_line(done)
    assert "disk full" in line and str(tmp_path / "metrics.jsonl") in line, line
