"""Fixtures for the bench/ report tests: import modules of the checkout's `bench` package."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def import_bench(module: str):
    """bench.<module> from the checkout. The repo root is not on sys.path under importlib mode and must not
    be (its kernels/ folder would shadow HF's `kernels`), so the package is registered from its path."""
    package = sys.modules.get("bench")
    if package is None or Path(getattr(package, "__file__", "") or "").resolve() != BENCH / "__init__.py":
        spec = importlib.util.spec_from_file_location("bench", BENCH / "__init__.py",
                                                      submodule_search_locations=[str(BENCH)])
        package = importlib.util.module_from_spec(spec)
        sys.modules["bench"] = package
        spec.loader.exec_module(package)
    return importlib.import_module(f"bench.{module}")


@pytest.fixture(scope="session")
def bench_module():
    """`bench_module("report")` -> the bench.report module."""
    return import_bench
