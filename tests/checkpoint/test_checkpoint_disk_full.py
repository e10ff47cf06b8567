"""A checkpoint save that runs out of disk space says so (CheckpointDiskFull naming checkpoints/, not torch's
`unexpected pos N vs M`) and deletes its partial `.tmp-step_<N>`: on a full disk that directory holds the space
the next start needs (the issue: an 18 MB leftover made the next start fail).

The disk is filled without filling the real one: the checkpoint file writer raises ENOSPC after a few bytes,
which torch.save turns into the same RuntimeError a real full disk gives (its OSError only the __context__);
where a tiny tmpfs can be mounted, a real full filesystem too."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from child_env import fresh_world_env
from primeflow.trainer.checkpointing import CheckpointError, CheckpointManager, files
from primeflow.trainer.checkpointing.manager import CheckpointDiskFull


def _set(width: int, seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(width, 64), torch.nn.Linear(64, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(5, width)).sum().backward()
    opt.step()
    return {"m": model}, {"m": opt}, {"m": torch.optim.lr_scheduler.StepLR(opt, 3)}


def _save(mgr: CheckpointManager, step: int, width: int = 8):
    models, opts, scheds = _set(width)
    return mgr.save(step, models=models, optimizers=opts, schedulers=scheds, trainer_state={"step": step})


def _disk_fills_after(monkeypatch, limit: int) -> None:
    """Every checkpoint file write past `limit` bytes (counted over the whole save) fails as a full disk does."""
    written = {"n": 0}
    real_write = files._HashingWriter.write

    def write(self, data) -> int:
        n = memoryview(data).nbytes
        if written["n"] + n > limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written["n"] += n
        return real_write(self, data)

    monkeypatch.setattr(files._HashingWriter, "write", write)


def _entries(mgr: CheckpointManager) -> list[str]:
    return sorted(p.name for p in mgr.dir.iterdir())


def test_a_full_disk_is_named_and_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    mgr = CheckpointManager(tmp_path)
    _save(mgr, 1)
    with monkeypatch.context() as patch:
        _disk_fills_after(patch, 2000)
        with pytest.raises(CheckpointDiskFull) as caught:
            _save(mgr, 2)
    message = str(caught.value)
    assert isinstance(caught.value, CheckpointError)  # `primeflow train` prints it in one line, exit 2
    assert "disk full" in message and str(mgr.dir) in message, message
    assert "unexpected pos" not in message and "\n" not in message, message
    assert _entries(mgr) == ["step_1"]  # the partial .tmp-step_2-* is gone, the earlier checkpoint kept
    assert mgr.latest() == 1
    _save(mgr, 2)  # with space again the next save works
    assert _entries(mgr) == ["step_1", "step_2"] and mgr.latest() == 2


def test_other_save_errors_are_not_called_disk_full_and_clean_up_too(tmp_path, monkeypatch):
    mgr = CheckpointManager(tmp_path)

    def write(self, data) -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(files._HashingWriter, "write", write)
    with pytest.raises(CheckpointError) as caught:
        _save(mgr, 3)
    assert not isinstance(caught.value, CheckpointDiskFull) and "disk full" not in str(caught.value)
    assert _entries(mgr) == []


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 1 MiB tmpfs (root only; skipped where mounting is not allowed)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_really_full_filesystem(tiny_tmpfs):
    mgr = CheckpointManager(tiny_tmpfs / "run")
    free_before = shutil.disk_usage(tiny_tmpfs).free
    with pytest.raises(CheckpointDiskFull, match="disk full"):
        _save(mgr, 1, width=4096)  # ~2 MB of weights and moments: more than the filesystem holds
    assert _entries(mgr) == []
    assert shutil.disk_usage(tiny_tmpfs).free >= free_before - 64 * 1024  # the space came back
    _save(mgr, 2, width=8)  # a small checkpoint fits again
    assert mgr.latest() == 2


@pytest.mark.multiproc
def test_one_ranks_full_disk_is_every_ranks_disk_full(tmp_path):
    """Under torchrun the rank whose disk filled reports it to all: every rank raises CheckpointDiskFull, and
    rank 0 deletes the partial checkpoint the ranks were writing together."""
    env = fresh_world_env()
    worker = Path(__file__).resolve().parent / "mp_disk_full.py"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(worker), str(tmp_path)], capture_output=True, text=True, timeout=600,
                          env={**env, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for rank in (0, 1):
        outcome = (tmp_path / f"outcome.{rank}.txt").read_text()
        assert outcome.startswith("CheckpointDiskFull: checkpoint step 1: disk full"), outcome
        assert str(tmp_path / "checkpoints") in outcome, outcome
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == []
