"""Fault injection for the kill-and-resume tests: `PRIMEFLOW_FAULT=<stage>@<step>` makes the process
SIGKILL itself when it reaches that stage of that step (no cleanup, no flush: a real crash). Unset in
normal runs, where fault_point costs one environment lookup."""

from __future__ import annotations

import os
import signal

_current_step = 0


def set_step(step: int) -> None:
    global _current_step
    _current_step = step


def fault_point(stage: str) -> None:
    spec = os.environ.get("PRIMEFLOW_FAULT")
    if spec and spec == f"{stage}@{_current_step}":
        os.kill(os.getpid(), signal.SIGKILL)
