"""Independent checks that a sandboxed run left nothing behind (used by the code verifier tests).

They look at the machine, not at what the sandbox reports: processes owned by a sandbox uid, processes in
the sandbox cgroups, and files owned by a sandbox uid in the places an unprivileged user could write.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from primeflow.trainer.verifiers import SandboxLimits, code_score
from primeflow.trainer.verifiers.sandbox import CGROUP_NAME, CGROUP_V1, MAX_SLOTS, UID_BASE

WORLD_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue")


def is_sandbox_uid(uid: int) -> bool:
    return UID_BASE <= uid < UID_BASE + MAX_SLOTS


def sandbox_processes() -> list[int]:
    """PIDs of live processes owned by any sandbox uid, or inside a sandbox cgroup."""
    pids = set()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            status = Path(f"/proc/{d}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Uid:"):
                if any(is_sandbox_uid(int(x)) for x in line.split()[1:]):
                    pids.add(int(d))
                break
    for ctrl in ("pids", "memory"):
        root = CGROUP_V1 / ctrl / CGROUP_NAME
        if root.is_dir():
            for procs in root.glob("*/cgroup.procs"):
                pids.update(int(x) for x in procs.read_text().split())
    return sorted(pids)


def files_owned_by_sandbox(extra_roots: tuple[str, ...] = ()) -> list[str]:
    """Files/dirs owned by a sandbox uid in world-writable places (top two levels) and ``extra_roots``."""
    found = []
    for root in (*WORLD_WRITABLE, *extra_roots):
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            depth = dirpath[len(root) :].count(os.sep)
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                try:
                    if is_sandbox_uid(os.lstat(p).st_uid):
                        found.append(p)
                except OSError:
                    pass
            if depth >= 1 and root in WORLD_WRITABLE:
                dirnames[:] = []
    return found


def user_namespaces_of_sandbox() -> dict[int, str]:
    """``pid -> user namespace`` (e.g. ``user:[4026531837]``) of every live sandbox process."""
    found = {}
    for pid in sandbox_processes():
        try:
            found[pid] = os.readlink(f"/proc/{pid}/ns/user")
        except OSError:
            pass  # it exited meanwhile
    return found


class OpenWatch:
    """Records every open/read of ``directory`` or of a file directly in it, through any mount or namespace.

    inotify marks the inodes, so a sandbox that reached the files through its own mount namespace (a bind
    mount, ``/proc/<pid>/root``, ...) is seen here as well: an external check that a file was not read.
    """

    IN_ACCESS, IN_OPEN, IN_NONBLOCK = 0x1, 0x20, 0o4000

    def __init__(self, directory: Path) -> None:
        import ctypes

        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(self.IN_NONBLOCK)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if self._libc.inotify_add_watch(self.fd, str(directory).encode(), self.IN_OPEN | self.IN_ACCESS) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")

    def events(self) -> list[str]:
        """Names (``''`` = the directory itself) of what was opened or read since the watch began."""
        import struct

        names = []
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return names
        off = 0
        while off < len(data):
            _wd, mask, _cookie, size = struct.unpack_from("iIII", data, off)
            names.append(data[off + 16 : off + 16 + size].rstrip(b"\0").decode() + f" (mask {mask:#x})")
            off += 16 + size
        return names

    def close(self) -> None:
        os.close(self.fd)


GRACE_S = SandboxLimits().startup_grace_s + 3.0  # interpreter start-up on a loaded 2-core machine, + teardown


def bound(n_tests: int, timeout_s: float) -> float:
    """The longest a sandboxed call may take: every test at its wall limit, plus start-up grace."""
    return n_tests * (timeout_s + 0.5) + GRACE_S


def run_checked(
    program: str,
    inputs: list[str],
    outputs: list[str],
    *,
    timeout_s: float = 2.0,
    extra_roots: tuple[str, ...] = (),
    max_s: float | None = None,
    **kw,
) -> float:
    """``code_score`` of ``program``, asserting on the machine itself that the call returned within its limits
    (``max_s``, or every test at its wall limit plus start-up grace), that no sandbox process survived it and
    that no sandbox uid owns a file in the world-writable places or ``extra_roots``."""
    assert sandbox_processes() == [], "a previous sandbox left processes behind"
    t0 = time.monotonic()
    score = code_score(f"```python\n{program}\n```", {"inputs": inputs, "outputs": outputs}, timeout_s=timeout_s, **kw)
    elapsed = time.monotonic() - t0
    assert elapsed < (max_s if max_s is not None else bound(len(inputs), timeout_s)), f"took {elapsed:.1f} s"
    assert sandbox_processes() == [], "processes outlived the sandbox"
    assert files_owned_by_sandbox(extra_roots) == [], "the sandbox wrote outside its temp dir"
    return score
