"""Ctrl-C during `primeflow train` that is never lost and never breaks a lock.

Python's own SIGINT handler raises KeyboardInterrupt wherever the main thread happens to be when the handler
runs. During a checkpoint save that is often inside an at-fork hook (megatron-core's checkpoint writer forks
worker processes): the exception is printed as "Exception ignored in: <function _releaseLock>" with a
traceback, the run carries on as if nothing happened, and logging's module lock is left held (the next
logging call in the process would wait forever). Measured: 2 of 3 SIGINTs sent after a step line were lost.

`ctrl_c_guard()` (train's main) replaces that handler: SIGINT still raises KeyboardInterrupt at once, except
while this process forks (between its at-fork hooks), where it is only recorded; `reraise_pending()`, called
by the loop at every step boundary, raises a recorded one. KeyboardInterrupts that other code swallows anyway
(a __del__, a callback) are kept off stderr and recorded the same way. Forked children ignore SIGINT: the
trainer decides when its helpers stop.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class _State:
    active: bool = False   # inside ctrl_c_guard
    pending: bool = False  # a SIGINT arrived and has not ended the run yet
    forking: int = 0       # > 0 between this process's before-fork and after-fork hooks
    hooks_registered: bool = False


_state = _State()


def _on_sigint(signum, frame) -> None:
    _state.pending = True
    if not _state.forking:
        raise KeyboardInterrupt


def _before_fork() -> None:
    _state.forking += 1


def _after_fork_in_parent() -> None:
    _state.forking -= 1


def _after_fork_in_child() -> None:
    _state.forking = 0
    if _state.active:
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        except ValueError:  # forked from a thread other than the main one: signal handlers cannot be set there
            pass


def _unraisable_hook(previous):
    def hook(info) -> None:
        if _state.active and info.exc_type is KeyboardInterrupt:
            _state.pending = True  # raised where it could not propagate: reraise_pending() raises it
            return
        previous(info)

    return hook


@contextmanager
def ctrl_c_guard() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt and is never lost (module docstring); the previous handlers come back
    after. Outside the main thread (where no signal handler can be set) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if not _state.hooks_registered:  # at-fork hooks cannot be removed: register once, they check `active`
        # registered after the libraries' own hooks, so the window spans theirs (before-fork hooks run in
        # reverse registration order, after-fork hooks in order)
        os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                            after_in_child=_after_fork_in_child)
        _state.hooks_registered = True
    previous_handler = signal.signal(signal.SIGINT, _on_sigint)
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _unraisable_hook(previous_hook)
    _state.active, _state.pending = True, False
    try:
        yield
    finally:
        _state.active, _state.pending = False, False
        sys.unraisablehook = previous_hook
        signal.signal(signal.SIGINT, previous_handler)


def reraise_pending() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C arrived but did not end the run (recorded while forking, or
    swallowed where it was raised)."""
    if _state.pending:
        raise KeyboardInterrupt
