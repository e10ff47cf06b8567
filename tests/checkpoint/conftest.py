"""Fixtures for checkpoint tests: a 1-process world (trainer.parallel), tiny HF checkpoints, trained models."""

from __future__ import annotations

import importlib.util
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

