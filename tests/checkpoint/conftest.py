"""Fixtures for checkpoint tests: a 1-process world (trainer.parallel), tiny HF checkpoints, trained models."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist
from primeflow.models import make_tiny_checkpoint

HERE = Path(__file__).resolve().parent


def load_helper(name: str):
    """Import tests/checkpoint/<name>.py by path (tests/ is not on sys.path; see tests/models/conftest.py)."""
    spec = importlib.util.spec_from_file_location(f"_primeflow_tests_checkpoint_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def world():
    """A world of one process with Megatron groups at tp=pp=1 (torn down only if this fixture started it)."""
    from primeflow.trainer.parallel import init_distributed, shutdown

    started = not dist.is_initialized()
    layout = init_distributed(tp=1, pp=1, backend="gloo")
    yield layout
    if started:
        shutdown()


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt_tiny"), seed=3)


@pytest.fixture
def ckpt_helpers():
    return load_helper("helpers")


@pytest.fixture(scope="session")
def crash_worker():
    return load_helper("crash_worker")



MP_LAYOUTS = ("2x1", "1x1", "1x2")  # TP=2; DP=2; PP=2 (2 processes each)


@pytest.fixture(scope="session")
def mp_runs(tiny_ckpt, tmp_path_factory):
    """One torchrun job (2 processes, gloo) running mp_checkpoint.py for every layout in MP_LAYOUTS.
    Returns (its result dict, run root, live-export root, the seed used). Session-scoped: the job is shared
    by test_checkpoint_multiproc.py and test_export_multiproc.py."""
    root = tmp_path_factory.mktemp("mp_ckpt")
    seed = int(os.environ.get("PRIMEFLOW_TEST_SEED", int.from_bytes(os.urandom(3), "little")))
    print(f"mp_runs seed={seed} (replay with PRIMEFLOW_TEST_SEED={seed})")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(HERE / "mp_checkpoint.py"), "--layouts", *MP_LAYOUTS, "--ckpt", str(tiny_ckpt),
           "--run-dir", str(root / "run"), "--live-export", str(root / "live"), "--out", str(root / "result.json"),
           "--seed", str(seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"torchrun (seed {seed}) failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-8000:]}"
    return json.loads((root / "result.json").read_text()), root / "run", root / "live", seed
