"""Fixtures for model tests: tiny checkpoints on disk and a real-vLLM greedy generator (child process)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from primeflow.models import make_tiny_checkpoint

_HERE = Path(__file__).resolve().parent


def load_helper(name: str, folder: Path = _HERE):
    """Import <folder>/<name>.py by path (tests/ is not on sys.path under --import-mode=importlib, and
    must not be: its kernels/ folder would shadow HF's `kernels` package)."""
    spec = importlib.util.spec_from_file_location(f"_primeflow_tests_{folder.name}_{name}", folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tolerances():
    """tests/tolerances.py (the one tolerance table)."""
    return load_helper("tolerances", _HERE.parent)


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> Path:
    """Default tiny Qwen2 checkpoint (untied embeddings, vocab 259), seed 0."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_qwen2"), seed=0)


@pytest.fixture(scope="session")
def tiny_llama_tied(tmp_path_factory) -> Path:
    """Llama-style tiny checkpoint with tied embeddings and a padded tokenizer (vocab 320), seed 1."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_llama"), seed=1, architecture="llama",
                                tie_word_embeddings=True, vocab_size=320)


@pytest.fixture(scope="session")
def vllm_greedy():
    """`generate_greedy(runs)` from vllm_generate.py: real vLLM in a child process."""
    return load_helper("vllm_generate").generate_greedy


@pytest.fixture(scope="session")
def helper():
    """`helper("parity")` -> tests/models/parity.py as a module (cached per session)."""
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = load_helper(name)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def world(helper):
    """A 1-process world with Megatron groups at TP=PP=1 for one test module, torn down after it."""
    dist_helper = helper("dist")
    dist_helper.init_parallel(tp=1, pp=1)
    yield
    dist_helper.shutdown()
