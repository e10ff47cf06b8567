"""SIGKILL during a save never leaves a corrupt step_<N>: a worker process (crash_worker.py) is killed at
every durable point of a save (directory prepared, each file, manifest, rename, pruning) and at random
times while saving large checkpoints in a loop; afterwards every step_<N> present verifies (sha256) and
holds exactly step N's values, latest() is the newest complete step, and the next save cleans up."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from child_env import fresh_world_env
from primeflow.trainer.checkpointing import CheckpointManager

WORKER = Path(__file__).resolve().parent / "crash_worker.py"
# Events of the paused save (step 3, keep_last=2, so it prunes step 1): prepared, 5 files (model, optim,
# sched, trainer_state, rng), manifest, renamed, trashed (step 1 moved aside), pruned.
EVENTS_OF_STEP3 = ["prepared", "file", "file", "file", "file", "file", "manifest", "renamed", "trashed", "pruned"]


def _check_run(run_dir: Path, numel: int) -> list[int]:
    """Every complete checkpoint loads (hash-verified) with its own step's values; returns the steps."""
    mgr = CheckpointManager(run_dir, keep_last=2)
    steps = mgr.steps()
    for step in steps:
        model = torch.nn.Linear(numel, 1, bias=False)
        opt = torch.optim.AdamW(model.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10)
        state = mgr.load(step, models={"m": model}, optimizers={"m": opt}, schedulers={"m": sched}, rng=False)
        assert state == {"step": step}
        assert torch.all(model.weight == step)
        assert torch.all(opt.state[model.weight]["exp_avg"] == 2 * step)
    # Directories named step_* that are not complete would be a corruption the protocol must prevent.
    named = sorted(int(p.name[5:]) for p in mgr.dir.glob("step_*"))
    assert named == steps, f"incomplete step directories present: {named} vs complete {steps}"
    return steps


def _finish_cleanly(run_dir: Path) -> None:
    mgr = CheckpointManager(run_dir, keep_last=2)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mgr.save(100, models={"x": model}, optimizers={"x": opt}, schedulers={}, trainer_state={})
    assert not [p for p in mgr.dir.iterdir() if p.name.startswith(".")], "leftovers not cleaned by next save"
    assert mgr.latest() == 100


def _fork_paused_saver(run_dir: Path, worker) -> tuple[int, object, int]:
    """A forked child (torch already imported: no interpreter start per kill point) that saves steps 1..3
    and stops at every event of step 3; returns (pid, event reader, fd to write 'go on' bytes to)."""
    ev_r, ev_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 0
        try:
            os.close(ev_r)
            os.close(go_w)
            out = os.fdopen(ev_w, "w", buffering=1)
            worker.run(str(run_dir), steps=3, pause_step=3, emit=lambda s: out.write(s + "\n"),
                       wait=lambda: os.read(go_r, 1) or os._exit(3))
        except BaseException:  # noqa: BLE001 - reported through the exit code
            import traceback

            traceback.print_exc()
            code = 1
        os._exit(code)
    os.close(ev_w)
    os.close(go_r)
    return pid, os.fdopen(ev_r), go_w


@pytest.mark.parametrize("kill_at", range(len(EVENTS_OF_STEP3)),
                         ids=[f"{i}-{e}" for i, e in enumerate(EVENTS_OF_STEP3)])
def test_sigkill_at_each_point_of_a_save(tmp_path, kill_at, crash_worker):
    pid, events, go = _fork_paused_saver(tmp_path, crash_worker)
    seen = []
    try:
        for line in events:
            if line.startswith("SAVED"):
                continue
            seen.append(line.split()[0])
            if len(seen) - 1 == kill_at:
                os.kill(pid, signal.SIGKILL)
                break
            os.write(go, b"g")
    finally:
        events.close()
        os.close(go)
        _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"child status {status}"
    assert seen == EVENTS_OF_STEP3[:kill_at + 1]
    steps = _check_run(tmp_path, 64)
    renamed = kill_at >= EVENTS_OF_STEP3.index("renamed")
    pruned = kill_at >= EVENTS_OF_STEP3.index("trashed")
    assert steps == ([2, 3] if pruned else [1, 2, 3] if renamed else [1, 2])
    _finish_cleanly(tmp_path)


def test_sigkill_at_random_times_during_large_saves(tmp_path, seed):
    """A separate interpreter saving 1 MB files in a loop, killed after a random delay (twice): kill times
    land inside saves as well as between them."""
    rng = random.Random(seed)
    numel = 250_000
    outcomes = []
    for attempt in range(2):
        run_dir = tmp_path / f"run{attempt}"
        proc = subprocess.Popen([sys.executable, str(WORKER), str(run_dir), "--steps", "1000", "--numel",
                                 str(numel)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = proc.stdout.readline()  # the first save finished: the worker is saving in a loop now
        assert first.startswith("SAVED"), proc.stderr.read()
        time.sleep(rng.uniform(0.0, 0.5))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        leftovers = [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]
        outcomes.append((_check_run(run_dir, numel), leftovers))
        _finish_cleanly(run_dir)
    print(outcomes)
    assert all(steps for steps, _ in outcomes)


def test_a_killed_process_leaves_nothing_behind_after_a_dist_save(tmp_path):
    """After a dist_checkpointing save, a SIGKILL ends everything the trainer started: no process of its session
    survives to hold its stdout open (megatron-core's writer used to leave a Manager server process, so a
    launcher reading the trainer's output waited forever), and the checkpoint it saved verifies."""
    worker = Path(__file__).resolve().parent / "kill_after_dist_save.py"
    proc = subprocess.Popen([sys.executable, str(worker), str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=fresh_world_env(), start_new_session=True)
    try:
        out, err = proc.communicate(timeout=300)  # EOF on both pipes: every holder of them has exited
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the killed process's pipes stayed open: something it started outlived it")
    assert proc.returncode == -signal.SIGKILL and "SAVED" in out, err[-3000:]
    with pytest.raises(ProcessLookupError):  # nobody is left in the worker's session
        os.killpg(proc.pid, 0)
    assert CheckpointManager(tmp_path / "run", keep_last=2).steps() == [1]
