"""Run untrusted programs against tests in a sandbox; the launcher side (the inside is sandbox_harness.py).

Layers, strongest available first (``sandbox_status()`` says which are active, and why not the others):

- ``root`` isolation (we run as root, the dev/CI case): ``unshare --net --mount --pid --ipc --uts --fork
  --kill-child --mount-proc`` (util-linux, on every Debian) gives a new network namespace with no interface
  up (no network), a private mount namespace whose root the harness replaces by a minimal tree
  (sandbox_rootfs.py, contents chosen by sandbox_view.py): the interpreter and its shared libraries
  read-only, a fresh size-limited tmpfs as the working dir, a few /dev nodes and the sandbox's own /proc;
  no other host path exists in there (test data, checkouts, /opt, /srv, home directories, sockets, /sys).
  No shell or coreutils either: programs run Python (``sys.executable`` included). Where a step of that
  root fails (pivot_root refused, say, on an initramfs root), the harness reports a setup error and the
  program is not run (scored 0, counted in code/setup_errors, logged once): never with the host tree in view.
  A pid namespace (the harness is PID 1; when it exits the kernel kills everything left, so no background
  process survives), and the harness drops to a per-slot unprivileged uid (``UID_BASE + slot``, no groups,
  no_new_privs) so RLIMIT_NPROC is enforced (it is not for root) and one sandbox's fork bomb cannot starve
  another's process count. rlimits: CPU time per test, address space, file size, open files, process count,
  no core files. Plus, when cgroup v1 ``pids`` and ``memory`` hierarchies are writable, a per-slot cgroup
  with ``pids.max`` and a memory limit for the whole sandbox (address-space limits are per process; a fork
  bomb of big processes is not).
- ``userns`` (non-root with unprivileged user namespaces): the same namespaces and minimal root via
  ``unshare --user --map-root-user``, all capabilities dropped; RLIMIT_NPROC applies to the caller's real uid.
- ``none`` (no namespaces possible): logged loudly. Programs run with rlimits in a temp dir, and an audit
  hook in the program's interpreter forbids sockets, process creation, signals, ctypes and writes outside
  its dir. This is weaker (an audit hook is not a kernel boundary; host paths stay readable);
  ``SandboxLimits(require_isolation=True)`` refuses to run instead.

In every mode a seccomp filter (sandbox_seccomp.py) refuses unix sockets (a listening socket is reached by
path, whatever the network namespace), new namespaces (no user namespace to gain capabilities in), mounts,
io_uring and a few other kernel surfaces. The probe checks once that the filter works here; where it does
not (a kernel without seccomp filters, an architecture without a table), the status says so, runs go on
without it, and ``require_isolation=True`` refuses instead.

The process runs with a clean environment (no inherited secrets) and in its own session/process group, which
is SIGKILLed on the overall deadline. Outputs are compared outside the sandbox (code_runner.py).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .sandbox_view import sandbox_view

log = logging.getLogger(__name__)

HARNESS = Path(__file__).with_name("sandbox_harness.py")
SECCOMP = Path(__file__).with_name("sandbox_seccomp.py")  # run as a script, it tests the filter on itself
UID_BASE = 1_900_000_000  # far above any real or subordinate uid; one uid per concurrent sandbox slot
MAX_SLOTS = 64
CGROUP_V1 = Path("/sys/fs/cgroup")
CGROUP_NAME = "primeflow_sandbox"
_NS_FLAGS = ["--net", "--mount", "--pid", "--ipc", "--uts", "--fork", "--kill-child", "--mount-proc"]
_CLEAN_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "HOME": "/tmp/work",
    "TMPDIR": "/tmp/work",
    "PYTHONHASHSEED": "0",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


@dataclass(frozen=True, kw_only=True)
class SandboxLimits:
    """Resource limits of one sandboxed program run (all of its tests)."""

    memory_bytes: int = 1 << 30  # RLIMIT_AS per process, and the cgroup memory limit of the whole sandbox
    file_size_bytes: int = 16 << 20  # RLIMIT_FSIZE
    nproc: int = 32  # RLIMIT_NPROC (threads count) and cgroup pids.max
    nofile: int = 256
    tmpfs_bytes: int = 64 << 20  # size of the private working dir
    output_bytes: int = 8 << 20  # stdout kept per test
    startup_grace_s: float = 15.0  # wall time on top of the tests (interpreter start-up under load)
    require_isolation: bool = False  # True: raise instead of running without namespaces or seccomp filter

    def __post_init__(self) -> None:
        for name in ("memory_bytes", "file_size_bytes", "nproc", "nofile", "tmpfs_bytes", "output_bytes"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"SandboxLimits.{name} must be a positive int, got {v!r}")


@dataclass(frozen=True)
class SandboxStatus:
    isolation: str  # "root" | "userns" | "none"
    cgroups: bool
    reason: str
    seccomp: bool = True  # the filter of sandbox_seccomp.py is installed in every sandbox


@dataclass
class SandboxRun:
    records: list[dict]  # one per test that reported: {"i", "status", "exit", "out", "truncated"}
    setup_error: str | None
    killed: bool  # the overall deadline was hit and the sandbox was killed
    elapsed_s: float
    leftover_pids: int  # processes still in the slot cgroup after the run (should be 0; they are killed)


def _try(cmd: list[str]) -> tuple[bool, str]:
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=20, env=_CLEAN_ENV, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    return p.returncode == 0, (p.stderr + p.stdout).decode(errors="replace").strip()[:300]


def _cgroup_writable() -> bool:
    try:
        for ctrl in ("pids", "memory"):
            d = CGROUP_V1 / ctrl / CGROUP_NAME
            d.mkdir(exist_ok=True)
            if not os.access(d / "cgroup.procs", os.W_OK):
                return False
        return True
    except OSError:
        return False


class _Probe:
    """Decides once per process which isolation this machine allows."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.status: SandboxStatus | None = None

    def get(self) -> SandboxStatus:
        with self.lock:
            if self.status is None:
                self.status = self._with_seccomp(self._probe())
                level = logging.INFO if self.status.isolation == "root" and self.status.seccomp else logging.WARNING
                log.log(
                    level,
                    "code sandbox: isolation=%s cgroups=%s seccomp=%s (%s)",
                    self.status.isolation,
                    self.status.cgroups,
                    self.status.seccomp,
                    self.status.reason,
                )
            return self.status

    @staticmethod
    def _with_seccomp(status: SandboxStatus) -> SandboxStatus:
        """Install the filter in a throwaway interpreter, which checks that it refuses and allows as meant."""
        ok, err = _try([sys.executable, "-I", str(SECCOMP)])
        if ok:
            return status
        why = f"{status.reason}; NO seccomp filter ({err or 'self-test failed'}): unix sockets, namespaces allowed"
        return SandboxStatus(status.isolation, status.cgroups, why, seccomp=False)

    @staticmethod
    def _probe() -> SandboxStatus:
        unshare = shutil.which("unshare", path=_CLEAN_ENV["PATH"])
        if unshare is None:
            return SandboxStatus("none", False, "the `unshare` binary (util-linux) is missing: no namespaces")
        if os.geteuid() == 0:
            ok, err = _try([unshare, *_NS_FLAGS, "--", "/bin/true"])
            if ok:
                cg = _cgroup_writable()
                why = "namespaces + unprivileged uid" + (
                    " + cgroup v1 pids/memory" if cg else "; no writable cgroup v1 pids+memory: per-process limits only"
                )
                return SandboxStatus("root", cg, why)
            root_err = err
        else:
            root_err = "not running as root: cannot switch to an unprivileged sandbox uid"
        ok, err = _try([unshare, "--user", "--map-root-user", *_NS_FLAGS, "--", "/bin/true"])
        if ok:
            return SandboxStatus(
                "userns",
                False,
                f"{root_err}; using an unprivileged user namespace (RLIMIT_NPROC counts the caller's own processes)",
            )
        return SandboxStatus(
            "none",
            False,
            f"{root_err}; user namespaces unavailable ({err}): DEGRADED, "
            "programs run without network/pid/mount isolation under an audit hook",
        )


_PROBE = _Probe()


def sandbox_status() -> SandboxStatus:
    """Which isolation the code sandbox uses on this machine, and why (probed once, then cached)."""
    return _PROBE.get()


class _Slots:
    """Cross-process allocation of sandbox slots (uid + cgroup) with flock'ed files."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.gettempdir()) / f"primeflow-sandbox-slots-{os.geteuid()}"

    def acquire(self) -> tuple[int, int]:
        self.dir.mkdir(mode=0o700, exist_ok=True)
        deadline = time.monotonic() + 600
        while True:
            for slot in range(MAX_SLOTS):
                fd = os.open(self.dir / f"{slot}.lock", os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return slot, fd
                except BlockingIOError:
                    os.close(fd)
            if time.monotonic() > deadline:
                raise RuntimeError(f"no free sandbox slot out of {MAX_SLOTS} after 600 s")
            time.sleep(0.05)

    @staticmethod
    def release(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


_SLOTS = _Slots()


def _slot_cgroups(slot: int, limits: SandboxLimits) -> list[str]:
    paths = []
    for ctrl in ("pids", "memory"):
        d = CGROUP_V1 / ctrl / CGROUP_NAME / f"slot{slot}"
        d.mkdir(parents=True, exist_ok=True)
        if ctrl == "pids":
            (d / "pids.max").write_text(str(limits.nproc))
        else:
            (d / "memory.limit_in_bytes").write_text(str(limits.memory_bytes))
            memsw = d / "memory.memsw.limit_in_bytes"
            if memsw.exists():  # also forbid escaping the limit into swap
                memsw.write_text(str(limits.memory_bytes))
        paths.append(str(d))
    return paths


def _cgroup_pids(paths: list[str]) -> list[int]:
    pids: set[int] = set()
    for p in paths:
        try:
            pids.update(int(x) for x in Path(p, "cgroup.procs").read_text().split())
        except (OSError, ValueError):
            pass
    return sorted(pids)


def _count_own_processes() -> int:
    uid = os.getuid()
    n = 0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.stat(f"/proc/{d}").st_uid == uid:
                    n += 1
            except OSError:
                pass
    return n


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_in_sandbox(
    code: str,
    *,
    mode: str,
    inputs: list,
    fn_name: str | None,
    timeout_s: float,
    limits: SandboxLimits,
) -> SandboxRun:
    """Run ``code`` once per entry of ``inputs`` (stdin text for mode "stdio", an argument list for "call").

    Never raises for anything the program does; raises ValueError for bad arguments and RuntimeError if
    ``limits.require_isolation`` and the machine cannot isolate.
    """
    if mode not in ("stdio", "call"):
        raise ValueError(f"mode must be 'stdio' or 'call', got {mode!r}")
    if mode == "call" and not fn_name:
        raise ValueError("fn_name is required for mode 'call'")
    status = sandbox_status()
    if (status.isolation == "none" or not status.seccomp) and limits.require_isolation:
        raise RuntimeError(f"code sandbox cannot isolate on this machine: {status.reason}")
    start = time.monotonic()
    deadline_s = limits.startup_grace_s + len(inputs) * (timeout_s + 0.5)
    slot, slot_fd = _SLOTS.acquire()
    workdir = None
    try:
        uid = UID_BASE + slot
        cgroups = _slot_cgroups(slot, limits) if status.cgroups else []
        # As root, always run the program as the slot's unprivileged uid (even in the degraded mode, where
        # it is the strongest layer left: RLIMIT_NPROC and file permissions then apply).
        drop_uid = os.geteuid() == 0 and status.isolation in ("root", "none")
        lim = asdict(limits)
        if not drop_uid:  # RLIMIT_NPROC then counts the caller's own processes too
            lim["nproc"] = _count_own_processes() + limits.nproc
        if status.isolation == "none":
            workdir = tempfile.mkdtemp(prefix="primeflow-sbx-")
            if drop_uid:
                os.chown(workdir, uid, uid)
        job = {
            "mode": mode,
            "code": code,
            "inputs": inputs,
            "fn_name": fn_name,
            "timeout_s": timeout_s,
            "deadline_s": deadline_s,
            "limits": lim,
            "uid": uid,
            "cgroups": cgroups,
            "mode_isolation": status.isolation,
            "drop_uid": drop_uid,
            "env": _CLEAN_ENV,
            "workdir": workdir,
            "view": asdict(sandbox_view()) if status.isolation != "none" else None,
            "seccomp": status.seccomp,
        }
        python = [sys.executable, "-I", str(HARNESS)]
        unshare = shutil.which("unshare", path=_CLEAN_ENV["PATH"])
        if status.isolation == "root":
            cmd = [unshare, *_NS_FLAGS, "--", *python]
        elif status.isolation == "userns":
            cmd = [unshare, "--user", "--map-root-user", *_NS_FLAGS, "--", *python]
        else:
            cmd = python
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=_CLEAN_ENV,
            start_new_session=True,
            close_fds=True,
            cwd="/",
        )
        killed = False
        try:
            out, _ = proc.communicate(json.dumps(job).encode(), timeout=deadline_s + 2.0)
        except subprocess.TimeoutExpired:
            killed = True
            _kill_group(proc)
            out, _ = proc.communicate()
        _kill_group(proc)  # anything left in the launcher's group (the namespaces died with their PID 1)
        leftovers = _cgroup_pids(cgroups)
        if leftovers:
            for pid in leftovers:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            log.error("code sandbox: %d processes outlived their sandbox and were killed", len(leftovers))
        records, setup_error = _parse_records(out)
        if proc.returncode not in (0, None) and setup_error is None and not records and not killed:
            setup_error = f"sandbox launcher exited with {proc.returncode}"
        return SandboxRun(records, setup_error, killed, time.monotonic() - start, len(leftovers))
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        _SLOTS.release(slot_fd)


def _parse_records(out: bytes) -> tuple[list[dict], str | None]:
    records: dict[int, dict] = {}
    setup_error = None
    for line in out.decode("utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict):
            continue
        if "setup_error" in rec:
            setup_error = str(rec["setup_error"])
        elif isinstance(rec.get("i"), int) and rec["i"] not in records:
            records[rec["i"]] = rec
    return [records[i] for i in sorted(records)], setup_error
