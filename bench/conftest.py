"""Benchmarks are not tests: they run only when asked (`pytest bench/ --benchmark-only`)."""

import os
import shlex
import sys
from pathlib import Path

# bench/ helpers (memory.py) are imported by name; the repo root stays off sys.path (see pyproject.toml).
sys.path.insert(0, str(Path(__file__).resolve().parent))

_RECORDED_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "TRITON_INTERPRET")


def pytest_configure(config):
    # The suites are bench_*.py, which pytest's default python_files (test_*.py) would skip when collecting
    # the folder (`pytest bench/`); explicitly named files are collected either way.
    config.addinivalue_line("python_files", "bench_*.py")


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Record in every --benchmark-json file how it was produced, for bench/report.py: the command line with
    the environment overrides that change shapes or threads, the run's load, device and library versions."""
    from hardware import environment

    env = [f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items())
           if k.startswith("PRIMEFLOW_BENCH") or k in _RECORDED_ENV]
    output_json["command"] = " ".join([*env, shlex.join([".venv/bin/pytest", *config.invocation_params.args])])
    output_json["primeflow_environment"] = environment()
