"""Fixtures for rollout tests: checkpoints on disk, a per-module seed, and a runner for the vLLM children
(single process or torchrun) that return JSON results."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def load_helper(name: str):
    """Import tests/rollout/<name>.py by path (tests/ is not on sys.path under --import-mode=importlib)."""
    spec = importlib.util.spec_from_file_location(f"_primeflow_tests_rollout_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def module_seed() -> int:
    """A fresh seed per module (the `seed` fixture is per test; the vLLM children are shared by a module)."""
    value = int(os.environ.get("PRIMEFLOW_TEST_SEED", random.SystemRandom().randrange(2**31)))
    print(f"rollout module seed={value} (replay with PRIMEFLOW_TEST_SEED={value})")
    return value


def run_child(script: str, args: list[str], *, nproc: int = 1, timeout_s: float = 600) -> dict:
    """Run tests/rollout/<script> (under torchrun when nproc > 1) and return the JSON it wrote to --out."""
    out = Path(args[args.index("--out") + 1])
    if nproc == 1:
        cmd = [sys.executable, str(HERE / script), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(HERE / script), *args]
    # The engine sizes its own KV cache; a world left in this process's environment by an in-pytest gloo test
    # (MASTER_PORT, RANK, ...) must not be inherited: the child would try to listen on that port again.
    dropped = {"VLLM_CPU_KVCACHE_SPACE", "MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE",
               "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID"}
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    assert proc.returncode == 0, (f"{script} failed (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n"
                                  f"{proc.stderr[-8000:]}")
    return json.loads(out.read_text())


@pytest.fixture(scope="session")
def rollout_seed() -> int:
    return module_seed()


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory, rollout_seed) -> dict[str, Path]:
    return load_helper("ckpts").make_all(tmp_path_factory.mktemp("rollout_ckpts"), rollout_seed)


def _ckpts_file(ckpts: dict[str, Path], folder: Path) -> Path:
    f = folder / "ckpts.json"
    f.write_text(json.dumps({k: str(v) for k, v in ckpts.items()}))
    return f


@pytest.fixture(scope="session")
def single_process_run(ckpts, rollout_seed, tmp_path_factory) -> dict:
    """rollout_child.py's measurements (one vLLM engine shared by every test that reads them)."""
    folder = tmp_path_factory.mktemp("rollout_single")
    return run_child("rollout_child.py", ["--ckpts", str(_ckpts_file(ckpts, folder)), "--seed", str(rollout_seed),
                                          "--out", str(folder / "result.json")])


@pytest.fixture(scope="session")
def torchrun_run(ckpts, rollout_seed, tmp_path_factory):
    """`torchrun_run(vllm_tp)` -> mp_rollout.py's measurements with 2 processes (cached per vllm_tp)."""
    cache: dict[int, dict] = {}

    def get(vllm_tp: int) -> dict:
        if vllm_tp not in cache:
            folder = tmp_path_factory.mktemp(f"rollout_mp_tp{vllm_tp}")
            cache[vllm_tp] = run_child("mp_rollout.py", [
                "--ckpts", str(_ckpts_file(ckpts, folder)), "--seed", str(rollout_seed), "--vllm-tp", str(vllm_tp),
                "--out", str(folder / "result.json")], nproc=2)
        return cache[vllm_tp]

    return get


@pytest.fixture(scope="session")
def checks():
    """tests/rollout/checks.py as a module."""
    return load_helper("checks")
