"""A process pool whose every task has a hard wall-clock limit enforced by killing the worker.

Why not ``concurrent.futures.ProcessPoolExecutor``: a future's timeout only stops *waiting*; the worker keeps
running the stuck sympy call forever (verl PR #469: PRIME hung exactly like that), and a worker that dies
breaks the whole executor. Why not SIGALRM inside the worker: a signal handler only runs between bytecodes,
so a long C-level call (a huge integer power inside sympy) ignores it.

Here each worker owns a pipe; the parent dispatches one task per idle worker and waits on all pipes with a
deadline. A task past its deadline gets its worker SIGKILLed and replaced; a worker that crashes (segfault,
OOM kill, MemoryError in the loop) is replaced too. Either way that task gets the caller's default value and a
counter goes up. Workers are forked from a forkserver that has already imported the task module, so a
replacement costs a fork, not a 1 s sympy import.
"""

from __future__ import annotations

import importlib
import multiprocessing
import multiprocessing.connection
import multiprocessing.spawn
import os
import resource
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import pool_main


@dataclass
class PoolCounters:
    """Cumulative outcome counts of a pool (read them for metrics; they only grow)."""

    tasks: int = 0
    timeouts: int = 0
    crashes: int = 0
    errors: int = 0  # the task function raised: it scores the default value
    respawns: int = 0

    def as_dict(self, prefix: str = "") -> dict[str, int]:
        return {f"{prefix}{k}": v for k, v in self.__dict__.items()}


def _resolve(func_path: str) -> Callable[..., Any]:
    module, _, name = func_path.partition(":")
    return getattr(importlib.import_module(module), name)


def _worker_main(conn: multiprocessing.connection.Connection, func_path: str, mem_limit_bytes: int | None) -> None:
    """Worker loop: receive (task_id, args), reply (task_id, ok, result)."""
    # A Ctrl-C in the terminal reaches the whole process group; the trainer handles it and closes the pool,
    # so a worker that also raised KeyboardInterrupt would only print its own traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if mem_limit_bytes:
        # A runaway expression (9^9^9^9) then raises MemoryError instead of swapping the machine to death.
        resource.setrlimit(resource.RLIMIT_AS, (mem_limit_bytes, mem_limit_bytes))
    func = _resolve(func_path)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        task_id, args = msg
        try:
            result = func(*args)
            conn.send((task_id, True, result))
        except MemoryError:
            conn.send((task_id, False, "MemoryError"))
        except Exception as exc:  # noqa: BLE001 - any failure of one task is that task's 0, never the pool's
            conn.send((task_id, False, f"{type(exc).__name__}: {exc}"[:500]))


@dataclass
class _Worker:
    proc: Any
    conn: multiprocessing.connection.Connection
    ready: bool = False
    task: int | None = None
    deadline: float = 0.0
    done: int = 0
    spawned_at: float = field(default_factory=time.monotonic)


@dataclass
class HardTimeoutPool:
    """``map`` a module-level function over argument tuples with a hard per-task timeout.

    ``func_path`` is ``"package.module:function"``; that module is preloaded in the forkserver.
    Thread-safe (one ``map`` at a time); ``close()`` kills the workers; reusable across calls.
    """

    func_path: str
    workers: int
    mem_limit_bytes: int | None = 4 << 30
    max_tasks_per_worker: int = 5000  # recycle: sympy's caches grow without bound
    startup_timeout_s: float = 120.0  # a worker that never says "ready" means the pool cannot work at all
    counters: PoolCounters = field(default_factory=PoolCounters)

    def __post_init__(self) -> None:
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"workers must be an int >= 1, got {self.workers!r}")
        module = self.func_path.partition(":")[0]
        if module in ("", "__main__"):
            raise ValueError(f"func_path must name an importable module, got {self.func_path!r}")
        self._ctx = multiprocessing.get_context("forkserver")
        # Preloading makes respawning after a timeout cheap. The forkserver is process-global: if something
        # already started it, the preload list is ignored and workers import the module themselves (slower).
        # pool_main goes first: it makes workers skip re-running the caller's main script (see its
        # docstring), so scripts need no `if __name__ == "__main__":` guard. (multiprocessing's own
        # "__main__" preload never imports the caller's main on Python 3.11: it looks up a key its
        # preparation data does not have.)
        os.environ[pool_main.ENV_VAR] = pool_main.describe_main(
            multiprocessing.spawn.get_preparation_data("primeflow-verifier-pool")
        )
        self._ctx.set_forkserver_preload([pool_main.__name__, module])
        self._lock = threading.Lock()
        self._pool: list[_Worker] = []
        self._startup_failures = 0

    # -- worker lifecycle ------------------------------------------------------------------------------
    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=_worker_main, args=(child, self.func_path, self.mem_limit_bytes), daemon=True)
        proc.start()
        child.close()
        return _Worker(proc=proc, conn=parent)

    def _kill(self, w: _Worker) -> None:
        try:
            w.proc.kill()
        except (OSError, ValueError):
            pass
        w.proc.join(timeout=5.0)
        w.conn.close()

    def _replace(self, idx: int) -> None:
        self._kill(self._pool[idx])
        self._pool[idx] = self._spawn()
        self.counters.respawns += 1

    def close(self) -> None:
        """Stop and reap every worker (idempotent)."""
        with self._lock:
            self.close_unlocked()

    def close_unlocked(self) -> None:
        """``close`` for a caller that already holds the lock."""
        for w in self._pool:
            try:
                w.conn.send(None)
            except (OSError, ValueError):
                pass
        for w in self._pool:
            w.proc.join(timeout=0.5)
            self._kill(w)
        self._pool = []

    def worker_pids(self) -> list[int]:
        return [w.proc.pid for w in self._pool if w.proc.pid is not None]

    # -- mapping -----------------------------------------------------------------------------------------
    def map(self, args_list: Sequence[tuple], *, timeout_s: float, default: Any) -> list[Any]:
        """Results in input order; a task that times out, crashes its worker or raises gives ``default``."""
        if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
            raise ValueError(f"timeout_s must be a positive number, got {timeout_s!r}")
        with self._lock:
            while len(self._pool) < self.workers:
                self._pool.append(self._spawn())
            try:
                return self._run(list(args_list), float(timeout_s), default)
            except BaseException:
                # an interrupted map leaves workers mid-task with stale replies in their pipes: start over
                self.close_unlocked()
                raise

    def _run(self, tasks: list[tuple], timeout_s: float, default: Any) -> list[Any]:
        results: list[Any] = [default] * len(tasks)
        pending = deque(range(len(tasks)))
        outstanding = len(tasks)
        self.counters.tasks += len(tasks)
        while outstanding:
            now = time.monotonic()
            for w in self._pool:
                if w.ready and w.task is None and pending:
                    tid = pending.popleft()
                    try:
                        w.conn.send((tid, tasks[tid]))
                    except (OSError, ValueError):
                        pending.appendleft(tid)
                        w.ready = False  # broken pipe: the wait below sees EOF and replaces it
                        continue
                    w.task, w.deadline = tid, now + timeout_s
            busy = [w.deadline for w in self._pool if w.task is not None]
            wait_s = max(0.0, min(busy) - now) if busy else 1.0
            conns = [w.conn for w in self._pool]
            ready_conns = multiprocessing.connection.wait(conns, timeout=wait_s)
            for i, w in enumerate(list(self._pool)):
                if w.conn not in ready_conns:
                    continue
                try:
                    msg = w.conn.recv()
                except (EOFError, OSError):
                    msg = None
                if msg is None:  # the worker died
                    if w.task is not None:
                        self.counters.crashes += 1
                        outstanding -= 1
                    elif not w.ready:
                        # died before saying "ready": the task module cannot even be imported; respawning
                        # in a loop would never end
                        self._startup_failures += 1
                        if self._startup_failures >= 3 * self.workers:
                            raise RuntimeError(
                                f"verifier workers for {self.func_path} die at start-up "
                                f"(exit code {w.proc.exitcode}); is the package importable in a new process?"
                            )
                    self._replace(i)
                    continue
                if msg[0] == "ready":
                    w.ready = True
                    self._startup_failures = 0
                    continue
                tid, ok, value = msg
                if tid != w.task:
                    continue
                if ok:
                    results[tid] = value
                else:
                    self.counters.errors += 1
                w.task = None
                w.done += 1
                outstanding -= 1
                if w.done >= self.max_tasks_per_worker:
                    self._replace(i)
            now = time.monotonic()
            if not any(w.ready for w in self._pool) and all(
                now - w.spawned_at > self.startup_timeout_s for w in self._pool
            ):
                raise RuntimeError(
                    f"no verifier worker for {self.func_path} became ready within {self.startup_timeout_s} s"
                )
            for i, w in enumerate(list(self._pool)):
                if w.task is not None and now >= w.deadline:
                    self.counters.timeouts += 1
                    outstanding -= 1
                    self._replace(i)
        return results

    def __del__(self) -> None:  # best effort; callers should close()
        try:
            for w in self._pool:
                if w.proc.is_alive():
                    w.proc.kill()
        except Exception:  # noqa: BLE001
            pass


def make_pool(func_path: str, workers: int, **kwargs: Any) -> HardTimeoutPool:
    return HardTimeoutPool(func_path=func_path, workers=workers, **kwargs)
