"""Independent checks that a sandboxed run left nothing behind (used by the code verifier tests).

They look at the machine, not at what the sandbox reports: processes owned by a sandbox uid, processes in
the sandbox cgroups, and files owned by a sandbox uid in the places an unprivileged user could write.
"""

from __future__ import annotations

import os
from pathlib import Path

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
