"""Third-party logs off the console: vLLM, transformers, Megatron and torch messages go to run.dir/third_party.log.

Why: a 2-step run printed 53 library lines among its 67 (vLLM's INFO/WARNING lines with a 3 KB config dump,
Megatron's "Apex is not installed" UserWarnings, `RotaryEmbedding: Failed to load weights` at every refit),
burying the step lines. They still help when something goes wrong, so they are kept in a file, not dropped.

`logging.third_party` decides: "file" (the default) routes them there; "console" leaves every library printing
where it always did (nothing here changes anything).

Routed, where "third party" is anything outside the primeflow package:
  * log records of every logger outside `primeflow` (the root logger at INFO, so vLLM's INFO lines are kept).
    Libraries that print through their own stream handler are made to propagate instead: vLLM is told not to
    configure logging (VLLM_CONFIGURE_LOGGING=0, read when an engine is built), transformers' default handler
    is taken off, and so is the stream handler of any logger already configured;
  * Python warnings raised from code outside primeflow (warnings.showwarning).
primeflow's own warnings and WARNING log records still reach stderr, as before.
Not routed: text that C/C++ code writes to the process's stderr itself (torch's `[W ... utils.cpp] Warning:
NUMA binding ...`) and progress bars a library draws itself (vLLM's "Loading safetensors checkpoint shards").
Only redirecting the file descriptors would catch those, and that would also hide tracebacks.

Warnings raised while `primeflow train`'s modules import (Megatron's "Apex is not installed", ...) come before
any run directory exists: the CLI holds them (`hold_import_warnings`) and `route` sends them on like the rest.
A process that ends before any route (a config error, exit 2) drops them: they are notices about optional
libraries (Apex, Transformer Engine), and printed after the one-line error they would bury it.

The root logger and warnings.showwarning are process-wide, so there is one routing per process: `route`
replaces an active one and `restore` undoes it (train() calls it when the run ends, on errors too).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

THIRD_PARTY_LOG = "third_party.log"
MODES = ("file", "console")
OWN = "primeflow"
_VLLM_ENV = "VLLM_CONFIGURE_LOGGING"
_UNSET = object()


def _is_own_logger(name: str) -> bool:
    return name == OWN or name.startswith(OWN + ".")


def _own_dirs() -> list[Path]:
    """The source directories of primeflow's packages (trainer/, models/, ... map to primeflow.*)."""
    dirs = []
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if _is_own_logger(name) and name.count(".") <= 1 and file:
            dirs.append(Path(file).resolve().parent)
    return dirs


def _is_own_file(filename: str) -> bool:
    try:
        path = Path(filename).resolve()
    except (OSError, ValueError):
        return False
    return any(path.is_relative_to(d) for d in _own_dirs())


def _prints_itself(handler: logging.Handler) -> bool:
    """A plain stream handler: what vLLM and transformers attach to print on stdout / stderr (its subclasses,
    a FileHandler or a test harness's capture, stay)."""
    return type(handler) is logging.StreamHandler


@dataclass
class _Routing:
    """One active routing and everything it changed, to put back."""

    file_handler: logging.FileHandler
    own_handler: logging.Handler
    root_level: int
    showwarning: object
    vllm_env: object
    loggers: dict[str, tuple[list[logging.Handler], bool]] = field(default_factory=dict)

    def showwarning_to_file(self, message, category, filename, lineno, file=None, line=None) -> None:
        if file is not None or _is_own_file(filename):  # primeflow's warnings are meant for the user
            self.showwarning(message, category, filename, lineno, file, line)
            return
        text = warnings.formatwarning(message, category, filename, lineno, line).rstrip()
        logging.getLogger("py.warnings").warning("%s", text)

    def quiet(self, logger: logging.Logger) -> None:
        """Make `logger` print through the root logger (the file) instead of its own stream handlers."""
        if logger.name in self.loggers or not any(_prints_itself(h) for h in logger.handlers):
            return
        self.loggers[logger.name] = (list(logger.handlers), logger.propagate)
        for handler in [h for h in logger.handlers if _prints_itself(h)]:
            logger.removeHandler(handler)
        logger.propagate = True

    def undo(self) -> None:
        root = logging.getLogger()
        root.removeHandler(self.file_handler)
        root.setLevel(self.root_level)
        self.file_handler.close()
        logging.getLogger(OWN).removeHandler(self.own_handler)
        for name, (handlers, propagate) in self.loggers.items():
            logger = logging.getLogger(name)
            logger.handlers = handlers
            logger.propagate = propagate
        if warnings.showwarning == self.showwarning_to_file:
            warnings.showwarning = self.showwarning
        if self.vllm_env is _UNSET:
            os.environ.pop(_VLLM_ENV, None)
        else:
            os.environ[_VLLM_ENV] = self.vllm_env


_active: _Routing | None = None
_held: list[warnings.WarningMessage] = []


@contextmanager
def hold_import_warnings() -> Iterator[None]:
    """Record the warnings raised inside the block (under the filters in force: what Python would have shown)
    instead of printing them; the next `route` passes them on (to the file, or to the console in "console"
    mode)."""
    with warnings.catch_warnings(record=True) as caught:
        yield
    _held.extend(caught)


def _show_held(show) -> None:
    while _held:
        w = _held.pop(0)
        show(w.message, w.category, w.filename, w.lineno, None, w.line)


def route(mode: str, path: Path, *, rank: int = 0) -> None:
    """Send third-party logs to `path` (appended; every rank writes, its lines tagged) with mode "file"; with
    "console" leave them where the libraries print them. Replaces an earlier routing of this process."""
    global _active
    if mode not in MODES:
        raise ValueError(f"logging.third_party={mode!r} is not allowed; allowed values: {list(MODES)}")
    restore()
    if mode == "console":
        _show_held(warnings.showwarning)
        return
    file_handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s"))
    # with a handler on the root, logging's last-resort stderr output stops: primeflow's warnings need their own
    own_handler = logging.StreamHandler(sys.stderr)
    own_handler.setLevel(logging.WARNING)
    root = logging.getLogger()
    routing = _Routing(file_handler, own_handler, root.level, warnings.showwarning,
                       os.environ.get(_VLLM_ENV, _UNSET))
    root.addHandler(file_handler)
    root.setLevel(logging.INFO)
    logging.getLogger(OWN).addHandler(own_handler)
    os.environ[_VLLM_ENV] = "0"  # vLLM reads it when an engine is built (vllm.LLM configures logging then)
    try:  # transformers attaches its handler at first use: make it exist now, so it can be taken off
        from transformers.utils import logging as hf_logging

        hf_logging.get_logger()
    except ImportError:
        pass
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and not _is_own_logger(name):
            routing.quiet(logger)
    warnings.showwarning = routing.showwarning_to_file
    _active = routing
    _show_held(routing.showwarning_to_file)


def restore() -> None:
    """Undo `route` (no-op without one)."""
    global _active
    if _active is not None:
        _active.undo()
        _active = None
