"""`primeflow train` as a user sees it, on a tiny untrained model (no SFT: fast, the filter off):

* the console carries primeflow's lines; vLLM's INFO/WARNING lines (its config dump, `RotaryEmbedding: Failed to
  load weights` at every refit) and Megatron's warnings raised while the run builds its models are in
  run.dir/third_party.log instead;
* Ctrl-C (SIGINT) ends with exit code 130 and one line naming the last checkpoint and `--resume auto`, no
  traceback. The signal goes to the trainer process only: a terminal's Ctrl-C also reaches the verifier pool's
  worker processes, whose own KeyboardInterrupt tracebacks are trainer/verifiers/pool.py's to silence.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from child_env import fresh_world_env
from primeflow.trainer.checkpointing import CheckpointManager

pytestmark = pytest.mark.slow

TIMEOUT_S = 600
LIBRARY_LINES = ("RotaryEmbedding: Failed to load weights", "Initializing a V1 LLM engine",
                 "full scope is deprecated", "Apex is not installed")  # the last one: raised at import time


def _env() -> dict[str, str]:
    return fresh_world_env(OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    from primeflow.models import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("console_model"), seed=0)


def _command(model: Path, run_dir: Path, steps: int) -> list[str]:
    sets = [f"model.path={model}", f"run.dir={run_dir}", f"train.steps={steps}", "train.checkpoint_every=1",
            "filter.enabled=false", "data.prompts_per_step=2", "ppo.mini_batch_size=8", "prm.mini_batch_size=8"]
    return [sys.executable, "-m", "primeflow", "train", *[a for s in sets for a in ("--set", s)]]


def test_library_logs_go_to_the_run_dir_not_the_console(base_model, tmp_path):
    done = subprocess.run(_command(base_model, tmp_path, 2), capture_output=True, text=True, timeout=TIMEOUT_S,
                          env=_env())
    console = done.stdout + done.stderr
    assert done.returncode == 0, console[-6000:]
    assert "step 1/2 |" in done.stdout and "step 2/2 |" in done.stdout
    assert "(MainProcess" not in console, console[-6000:]  # vLLM's log prefix
    log = (tmp_path / "third_party.log").read_text()
    for line in LIBRARY_LINES:
        assert line not in console and line in log, (line, console[-6000:])


def _lines_of(stream, into: list[str]) -> threading.Thread:
    thread = threading.Thread(target=lambda: into.extend(stream), daemon=True)
    thread.start()
    return thread


def test_ctrl_c_ends_in_one_line_naming_the_checkpoint_and_how_to_resume(base_model, tmp_path):
    proc = subprocess.Popen(_command(base_model, tmp_path, 1000), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env())
    out: list[str] = []
    err: list[str] = []
    readers = [_lines_of(proc.stdout, out), _lines_of(proc.stderr, err)]
    deadline = time.monotonic() + TIMEOUT_S
    while not any(line.startswith("step 2/") for line in out):
        assert proc.poll() is None and time.monotonic() < deadline, "".join(out + err)[-6000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=120)
    for reader in readers:
        reader.join(timeout=30)
    stderr = "".join(err)
    assert rc == 130, stderr[-6000:]
    assert "Traceback" not in stderr + "".join(out), stderr[-6000:]
    (line,) = [x for x in stderr.splitlines() if x.startswith("primeflow train:")]
    latest = CheckpointManager(tmp_path).latest()
    assert latest is not None and latest >= 1
    assert "interrupted" in line and f"step {latest} " in line and "--resume auto" in line, line
