"""A seccomp filter for sandboxed programs: no unix sockets, no new namespaces, no mounts, no io_uring.

Loaded by sandbox_harness.py (stdlib only: it runs under ``python -I`` before the program) and installed in the
harness itself after its privilege drop, so every process of the sandbox inherits it and none can remove it.
Why each rule:

- ``socket(AF_UNIX, ...)``: the network namespace is empty, but a unix socket is reached through a *path*, and
  a listening socket inside a directory the sandbox is shown would be a door to a host service. Refused with
  EACCES. (``socketpair`` stays allowed: it reaches nothing but itself.)
- ``unshare`` / ``clone`` with any ``CLONE_NEW*`` flag, ``setns``: a new user namespace hands the program every
  capability inside it (mounts, raw sockets of its own, ...), a large kernel surface it has no use for.
  ``clone3`` passes its flags in memory that seccomp cannot read, so it answers ENOSYS, and the C library falls
  back to ``clone``, whose flags are checked.
- mount-family calls, ``chroot``, ``pivot_root``: no capability for them anyway; refused early.
- ``io_uring_*``: io_uring performs socket and file operations without the system calls this filter checks.
- ``bpf``, ``perf_event_open``, ``userfaultfd``, keyring calls (not namespaced), ``ptrace``,
  ``*_by_handle_at``: kernel surfaces a program has no business with.
- Other architectures' system call tables (a 32-bit ``int 0x80`` on x86-64, x32 numbers): the process is
  killed, since the numbers above would not mean what they say.

Run as a script, it installs the filter in itself and checks that it works (the launcher's probe).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import sys

AF_UNIX = 1
CLONE_NEW_MASK = 0x7E020080  # NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET | NEWTIME
X32_SYSCALL_BIT = 0x40000000

# (AUDIT_ARCH, syscall numbers) per machine; numbers from the kernel's syscall tables
_ARCHES: dict[str, tuple[int, dict[str, int]]] = {
    "x86_64": (
        0xC000003E,
        {
            "socket": 41, "clone": 56, "unshare": 272, "clone3": 435, "setns": 308,
            "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "open_tree": 428,
            "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
            "mount_setattr": 442, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
            "bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "keyctl": 250, "add_key": 248,
            "request_key": 249, "ptrace": 101, "name_to_handle_at": 303, "open_by_handle_at": 304,
        },
    ),
    "aarch64": (
        0xC00000B7,
        {
            "socket": 198, "clone": 220, "unshare": 97, "clone3": 435, "setns": 268,
            "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51, "open_tree": 428,
            "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
            "mount_setattr": 442, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
            "bpf": 280, "perf_event_open": 241, "userfaultfd": 282, "keyctl": 219, "add_key": 217,
            "request_key": 218, "ptrace": 117, "name_to_handle_at": 264, "open_by_handle_at": 265,
        },
    ),
}  # fmt: skip
_ALWAYS_DENIED = (
    "setns", "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr", "io_uring_setup", "io_uring_enter", "io_uring_register", "bpf",
    "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key", "ptrace", "name_to_handle_at",
    "open_by_handle_at",
)  # fmt: skip

# classic BPF opcodes and seccomp return values (linux/filter.h, linux/seccomp.h)
_LD_ABS_W, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_RET_ALLOW, _RET_KILL_PROCESS, _RET_ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6] (low word first, little-endian)
_NR, _ARCH, _ARG0_LO = 0, 4, 16
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2


class SeccompUnavailable(RuntimeError):
    """This machine cannot run the filter (unknown architecture, or a kernel without seccomp filters)."""


def supported() -> tuple[bool, str]:
    """Whether this machine's architecture has a table here (the kernel is checked by ``install``)."""
    machine = os.uname().machine
    if machine not in _ARCHES:
        return False, f"no seccomp syscall table for {machine}"
    if sys.byteorder != "little":
        return False, "the filter reads 64-bit arguments as little-endian"
    return True, machine


def build(machine: str) -> bytes:
    """The filter program for ``machine`` as packed ``struct sock_filter`` entries."""
    arch, nr = _ARCHES[machine]
    prog: list[tuple[int, int, object, object]] = []  # (code, k, jump-if-true label, jump-if-false label)

    def emit(code: int, k: int, jt: object = 0, jf: object = 0) -> None:
        prog.append((code, k, jt, jf))

    emit(_LD_ABS_W, _ARCH)
    emit(_JEQ, arch, 1, 0)
    emit(_RET, _RET_KILL_PROCESS)
    emit(_LD_ABS_W, _NR)
    if machine == "x86_64":
        emit(_JGE, X32_SYSCALL_BIT, "kill", 0)
    for name in _ALWAYS_DENIED:
        emit(_JEQ, nr[name], "eperm", 0)
    emit(_JEQ, nr["socket"], "socket", 0)
    emit(_JEQ, nr["unshare"], "ns_flags", 0)
    emit(_JEQ, nr["clone"], "ns_flags", 0)
    emit(_JEQ, nr["clone3"], "enosys", 0)
    emit(_RET, _RET_ALLOW)
    labels = {"socket": len(prog)}
    emit(_LD_ABS_W, _ARG0_LO)  # the domain
    emit(_JEQ, AF_UNIX, "eacces", 0)
    emit(_RET, _RET_ALLOW)
    labels["ns_flags"] = len(prog)
    emit(_LD_ABS_W, _ARG0_LO)  # the flags: every CLONE_NEW* bit is in the low word
    emit(_JSET, CLONE_NEW_MASK, "eperm", 0)
    emit(_RET, _RET_ALLOW)
    for label, err in (("eacces", errno.EACCES), ("eperm", errno.EPERM), ("enosys", errno.ENOSYS)):
        labels[label] = len(prog)
        emit(_RET, _RET_ERRNO | err)
    labels["kill"] = len(prog)
    emit(_RET, _RET_KILL_PROCESS)

    def offset(at: int, target: object) -> int:
        if isinstance(target, int):
            return target
        return labels[str(target)] - at - 1  # jumps count from the next instruction, forward only

    return b"".join(
        struct.pack("HBBI", code, offset(i, jt), offset(i, jf), k) for i, (code, k, jt, jf) in enumerate(prog)
    )


def install() -> None:
    """Install the filter in this process (inherited by every child; needs no_new_privs or CAP_SYS_ADMIN)."""
    ok, why = supported()
    if not ok:
        raise SeccompUnavailable(why)
    code = build(why)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buf = ctypes.create_string_buffer(code, len(code))
    fprog = SockFprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise SeccompUnavailable(f"prctl(PR_SET_SECCOMP): {os.strerror(err)}")


def _self_test() -> int:
    """Install the filter here and check a refused and an allowed call of each kind (the launcher's probe)."""
    import socket

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS: lets an unprivileged process install a filter
        print("prctl(PR_SET_NO_NEW_PRIVS) failed")
        return 1
    try:
        install()
    except SeccompUnavailable as e:
        print(e)
        return 1
    try:
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        print("a unix socket was created under the filter")
        return 1
    except PermissionError:
        pass
    if libc.unshare(0x10000000) == 0 or ctypes.get_errno() != errno.EPERM:  # CLONE_NEWUSER
        print("unshare(CLONE_NEWUSER) was not refused")
        return 1
    socket.socketpair()[0].close()  # still allowed
    import threading

    t = threading.Thread(target=lambda: None)  # threads: clone3 answers ENOSYS, the C library retries clone
    t.start()
    t.join()
    pid = os.fork()  # plain process creation still works
    if pid == 0:
        os._exit(7)
    if os.waitpid(pid, 0)[1] >> 8 != 7:
        print("fork under the filter failed")
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(_self_test())
