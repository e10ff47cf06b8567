"""Peak extra host memory of a call, read from the kernel's resident-set accounting.

Linux keeps the peak RSS of a process (VmHWM in /proc/self/status) and lets the process reset it by
writing "5" to /proc/self/clear_refs. Resetting, calling, and reading the peak back measures what the call
allocated at its worst moment above what was resident before: every allocation counts (torch's CPU
allocator returns large blocks to the OS on free, so earlier calls do not hide later ones).
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def peak_extra_bytes(fn: Callable[[], Any]) -> tuple[Any, int]:
    """(fn(), peak RSS during the call minus RSS before it, in bytes)."""
    gc.collect()
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    result = fn()
    peak = _status_kib("VmHWM")
    return result, max(0, peak - before) * 1024
