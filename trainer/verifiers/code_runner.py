"""Public code verifier: ``code_score`` (one response) and ``code_scores`` (a batch, concurrently).

Score = tests passed / tests run, over the first ``max_tests`` APPS-style tests (PRIME pass 2,
prime_spec.md §5.3). Each program runs once in a sandbox (sandbox.py) that runs its tests one by one,
each with the wall-clock ``timeout_s`` and a CPU-time limit; outputs are compared here, outside the sandbox,
with PRIME's whitespace-tolerant rules: exact, then per-line right-stripped, then whitespace-split tokens,
then tokens compared as floats (rel 1e-5, abs 1e-8, numpy.allclose's defaults that PRIME uses).
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .code_extraction import extract_code
from .sandbox import SandboxLimits, run_in_sandbox

DEFAULT_WORKERS = 2
log = logging.getLogger(__name__)


class _Counters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values = {
            "programs": 0,
            "tests_run": 0,
            "tests_passed": 0,
            "timeouts": 0,
            "killed": 0,
            "setup_errors": 0,
            "leftover_processes": 0,
        }

    def add(self, **kv: int) -> None:
        with self.lock:
            for k, v in kv.items():
                self.values[k] += v

    def as_dict(self) -> dict[str, int]:
        with self.lock:
            return {f"code/{k}": v for k, v in self.values.items()}


_COUNTERS = _Counters()
_SEEN_SETUP_ERRORS: set[str] = set()


def _report_setup_error(err: str) -> None:
    """A sandbox that cannot start scores every program 0: say so loudly (once per distinct reason) instead
    of letting the trainer see a silent accuracy of 0 (cf. PRIME's global-failure default, spec §5.4)."""
    if err not in _SEEN_SETUP_ERRORS:
        _SEEN_SETUP_ERRORS.add(err)
        log.error("code sandbox failed to start; the program scores 0 (counted in code/setup_errors): %s", err)


def code_counters() -> dict[str, int]:
    """Cumulative ``code/*`` counts: programs, tests_run, tests_passed, timeouts (per test), killed (whole
    sandbox hit its deadline), setup_errors (sandbox could not start: scored 0), leftover_processes."""
    return _COUNTERS.as_dict()


def _as_text(x: Any) -> str:
    if isinstance(x, str):
        return x
    if isinstance(x, list) and all(isinstance(t, str) for t in x):
        return "\n".join(x)
    return str(x)


def _floats(tokens: list[str]) -> list[float] | None:
    try:
        vals = [float(t) for t in tokens]
    except ValueError:
        return None
    return vals if all(math.isfinite(v) for v in vals) else None


def outputs_match(got: str, expected: str) -> bool:
    """PRIME-style whitespace-tolerant comparison of a program's stdout with the expected output."""
    if got == expected:
        return True
    g_lines = [line.rstrip() for line in got.strip().splitlines()]
    e_lines = [line.rstrip() for line in expected.strip().splitlines()]
    if g_lines == e_lines:
        return True
    g_tok, e_tok = got.split(), expected.split()
    if g_tok == e_tok:
        return True
    if len(g_tok) != len(e_tok) or not g_tok:
        return False
    gf, ef = _floats(g_tok), _floats(e_tok)
    if gf is None or ef is None:
        return False
    return all(abs(a - b) <= 1e-8 + 1e-5 * abs(b) for a, b in zip(gf, ef, strict=True))


def _normalise_tests(tests: Any, max_tests: int) -> tuple[str, list, list, str | None]:
    if isinstance(tests, str):
        try:
            tests = json.loads(tests)
        except ValueError as e:
            raise ValueError(f"tests is a str but not JSON: {e}") from None
    if not isinstance(tests, dict) or "inputs" not in tests or "outputs" not in tests:
        raise ValueError('tests must be a dict {"inputs": [...], "outputs": [...]} (optionally "fn_name")')
    inputs, outputs = tests["inputs"], tests["outputs"]
    if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
        raise ValueError("tests['inputs'] and tests['outputs'] must be lists of the same length")
    if not inputs:
        raise ValueError("tests must contain at least one test")
    if not isinstance(max_tests, int) or max_tests < 1:
        raise ValueError(f"max_tests must be an int >= 1, got {max_tests!r}")
    fn_name = tests.get("fn_name")
    inputs, outputs = inputs[:max_tests], outputs[:max_tests]
    if fn_name:
        if not all(isinstance(a, list) for a in inputs):
            raise ValueError("call-based tests need each input to be a list of arguments")
        return "call", inputs, outputs, str(fn_name)
    return "stdio", [_as_text(x) for x in inputs], [_as_text(x) for x in outputs], None


def code_score(
    response: str,
    tests: dict | str,
    *,
    timeout_s: float = 5.0,
    max_tests: int = 10,
    limits: SandboxLimits | None = None,
) -> float:
    """Fraction of the first ``max_tests`` tests that the response's program passes, in [0, 1].

    ``tests``: ``{"inputs": [...], "outputs": [...]}`` (stdin/stdout) or with ``"fn_name"`` (call-based:
    ``Solution().fn_name(*inputs[i]) == outputs[i]``, or a module-level function), or its JSON string.
    Each test gets ``timeout_s`` seconds of wall and CPU time. A program that cannot run scores 0.
    """
    if not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise ValueError(f"timeout_s must be a positive number, got {timeout_s!r}")
    mode, inputs, outputs, fn_name = _normalise_tests(tests, max_tests)
    code = extract_code(response)
    run = run_in_sandbox(
        code,
        mode=mode,
        inputs=inputs,
        fn_name=fn_name,
        timeout_s=float(timeout_s),
        limits=limits or SandboxLimits(),
    )
    passed = 0
    timeouts = 0
    for rec in run.records:
        i = rec["i"]
        if not 0 <= i < len(outputs):
            continue
        if rec.get("status") == "timeout":
            timeouts += 1
            continue
        if rec.get("exit") != 0 or rec.get("out") is None or rec.get("truncated"):
            continue
        if mode == "stdio":
            ok = outputs_match(rec["out"], outputs[i])
        else:
            try:
                ok = json.loads(rec["out"]) == outputs[i]
            except ValueError:
                ok = False
        passed += int(ok)
    if run.setup_error is not None:
        _report_setup_error(run.setup_error)
    _COUNTERS.add(
        programs=1,
        tests_run=len(outputs),
        tests_passed=passed,
        timeouts=timeouts,
        killed=int(run.killed),
        setup_errors=int(run.setup_error is not None),
        leftover_processes=run.leftover_pids,
    )
    return passed / len(outputs)


class _Executor:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pool: ThreadPoolExecutor | None = None
        self.workers = 0

    def get(self, workers: int) -> ThreadPoolExecutor:
        with self.lock:
            if self.pool is None or self.workers != workers:
                if self.pool is not None:
                    self.pool.shutdown(wait=True)
                self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="code-verifier")
                self.workers = workers
            return self.pool

    def close(self) -> None:
        with self.lock:
            if self.pool is not None:
                self.pool.shutdown(wait=True)
                self.pool = None


_EXECUTOR = _Executor()


def close_code_runner() -> None:
    """Stop the code verifier's threads (sandboxes themselves never outlive their call)."""
    _EXECUTOR.close()


def code_scores(
    responses: Sequence[str],
    tests: Sequence[dict | str],
    *,
    workers: int = DEFAULT_WORKERS,
    timeout_s: float = 5.0,
    max_tests: int = 10,
    limits: SandboxLimits | None = None,
) -> list[float]:
    """``code_score`` for each (response, tests) pair, ``workers`` sandboxes at a time.

    The sandboxes are separate processes, so threads here only wait on them.
    """
    if len(responses) != len(tests):
        raise ValueError(f"responses and tests must have the same length, got {len(responses)} and {len(tests)}")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    if not responses:
        return []
    pool = _EXECUTOR.get(workers)
    futures = [
        pool.submit(code_score, r, t, timeout_s=timeout_s, max_tests=max_tests, limits=limits)
        for r, t in zip(responses, tests, strict=True)
    ]
    return [f.result() for f in futures]
