"""Shared fixtures: fresh seeds, NaN-poisoned allocations, device and marker handling.

What CI runs: everything, including `slow`, `vllm` and `multiproc` tests (the suite is sized to finish well
inside CI's budget). `gpu` tests skip themselves without CUDA.
"""

from __future__ import annotations

import os
import random

import pytest
import torch


def _decorate_kernels_for_the_interpreter() -> None:
    """`triton.jit` picks interpreted or compiled mode once, when a kernel module is imported. Any test module
    (bench, trainer, models, ...) may import primeflow.kernels first, so on a machine without CUDA every
    kernel module is imported here, before collection, with TRITON_INTERPRET=1; the variable is then
    removed again and `_triton_interpret_per_module` decides per test which path ops dispatch to. (Kernel
    compilation for the static checks runs in subprocesses without the variable.)"""
    if torch.cuda.is_available():
        return
    import importlib
    import pkgutil

    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import primeflow.kernels as package

        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name.rsplit(".", 1)[-1] in ("kernel", "_triton_utils"):
                importlib.import_module(info.name)
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous


_decorate_kernels_for_the_interpreter()


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _triton_interpret_per_module(request, monkeypatch):
    """TRITON_INTERPRET=1 routes CPU tensors to the Triton kernels (primeflow.kernels._backend). On a machine
    without CUDA, only modules that declare `USES_TRITON_INTERPRETER = True` get it; every other test sees it
    unset, whichever module set it at import (triton.jit reads it when kernels are decorated, so interpreter
    modules set it at import time). Without this, collection order would decide which path a test runs."""
    if torch.cuda.is_available():
        return
    if getattr(request.module, "USES_TRITON_INTERPRETER", False):
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    else:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.fixture(autouse=True)
def _bound_use(request):
    """Stores the largest err/allowed ratio of the test's tolerance checks (tests/tolerances.py) as its
    `bound_use` property (junit XML), so scripts/exactness_sweep.py can report the worst case per test."""
    from tolerances import take_bound_use

    take_bound_use()
    yield
    request.node.user_properties.append(("bound_use", take_bound_use()))


_SEEDS_DRAWN: list[tuple[str, int]] = []


def pytest_terminal_summary(terminalreporter):
    """Every seed the run drew, in the log, so any run (a CI run above all) can be replayed test by test."""
    if _SEEDS_DRAWN:
        terminalreporter.section(f"seeds drawn ({len(_SEEDS_DRAWN)} tests; replay one with "
                                 "PRIMEFLOW_TEST_SEED=<seed> pytest <test>)")
        for nodeid, value in _SEEDS_DRAWN:
            terminalreporter.write_line(f"{value:>10}  {nodeid}")


@pytest.fixture
def seed(request) -> int:
    """A fresh seed per test run (printed on failure and in the run's summary), fixed with
    PRIMEFLOW_TEST_SEED to replay one."""
    value = int(os.environ.get("PRIMEFLOW_TEST_SEED", random.SystemRandom().randrange(2**31)))
    torch.manual_seed(value)
    random.seed(value)
    request.node.user_properties.append(("seed", value))
    _SEEDS_DRAWN.append((request.node.nodeid, value))
    print(f"seed={value} (replay with PRIMEFLOW_TEST_SEED={value})")
    return value


@pytest.fixture
def generator(seed) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
