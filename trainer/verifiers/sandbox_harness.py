"""In-sandbox test harness: runs as PID 1 of fresh pid/mount/net/ipc/uts namespaces (see sandbox.py).

Executed as a standalone script (``python -I sandbox_harness.py``, stdlib only), it reads one JSON job on
stdin, then:

1. (root and userns modes) joins the slot's cgroups (pids.max, memory limit) and replaces its mount
   namespace's root by a minimal tree (sandbox_rootfs.py): the interpreter and its libraries read-only, a
   size-limited tmpfs on /tmp holding the program's work dir, a few /dev nodes, the sandbox's own /proc;
   the host tree is detached, not covered;
2. sets rlimits (address space, file size, process count, open files, no core files), drops to the slot's
   unprivileged uid/gid with no groups (root mode) or every capability (userns mode), sets no_new_privs,
   makes itself non-dumpable (so the program, same uid, cannot open /proc/1/fd/* to forge results), asks
   for SIGKILL if its parent (``unshare``) dies, and installs the seccomp filter (sandbox_seccomp.py: no
   unix sockets, no new namespaces, no mounts, no io_uring), which every process of the sandbox inherits;
3. for each test: forks a child in its own process group with a CPU-time rlimit, stdin from the test input,
   stdout to an anonymous memfd (no name in the work dir: nothing planted there can stall or redirect the
   harness), stderr to /dev/null; runs the program there (stdin/stdout mode) or calls
   ``Solution().fn(*args)`` / ``fn(*args)`` (call mode); waits up to the wall timeout, then SIGKILLs the
   group and every other process of the sandbox uid (``kill(-1)``: as PID 1 it is immune itself).
4. writes one JSON line per test to the result fd: status, exit code, raw output. The outputs are compared
   *outside* the sandbox, so the expected answers never enter it and cannot be read or forged.

When it exits, the kernel kills everything left in the pid namespace.
"""

import builtins
import ctypes
import importlib.util
import io
import json
import os
import resource
import select
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
WORKDIR = "/tmp/work"

_libc = ctypes.CDLL(None, use_errno=True)


def _load_sibling(name):
    """Import a stdlib-only helper next to this script (``-I`` leaves the script's dir off sys.path, and
    putting it there would show it to the program too)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(os.path.dirname(__file__), name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _prctl(option, arg):
    if _libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def _set_rlimits(limits):
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_size_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits["nofile"],) * 2)
    resource.setrlimit(resource.RLIMIT_NPROC, (limits["nproc"],) * 2)


def _join_cgroups(paths):
    for path in paths:
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write("0")  # 0 = the writing process (works from inside a pid namespace)


def _drop_privileges(uid):
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise RuntimeError("privilege drop failed")


def _drop_all_capabilities():
    """Clear every capability (needed in user-namespace mode, where the sandbox stays uid 0 of its userns)."""
    for cap in range(64):
        if _libc.prctl(24, ctypes.c_ulong(cap), 0, 0, 0) != 0:  # PR_CAPBSET_DROP; EINVAL past the last cap
            break

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [
            ("effective", ctypes.c_uint32),
            ("permitted", ctypes.c_uint32),
            ("inheritable", ctypes.c_uint32),
        ]

    header = Header(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (Data * 2)()
    if _libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


def _reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _child_audit_hook(workdir):
    """Degraded mode only (no namespaces): refuse network, process creation and writes outside workdir."""
    blocked = (
        "socket.",
        "os.fork",
        "os.forkpty",
        "os.system",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "subprocess.Popen",
        "ctypes.",
        "os.kill",
        "os.killpg",
        "signal.pthread_kill",
    )

    def hook(event, args):
        if event.startswith(blocked):
            raise PermissionError(f"sandbox (degraded mode): {event} is not allowed")
        if event == "open" and len(args) >= 2 and args[1] and any(c in str(args[1]) for c in "wax+"):
            path = os.path.realpath(str(args[0])) if isinstance(args[0], (str, bytes)) else ""
            if isinstance(args[0], int) or not path.startswith(workdir + os.sep):
                raise PermissionError("sandbox (degraded mode): writing outside the work dir is not allowed")

    sys.addaudithook(hook)


def _run_child(job, idx, fds, result_fd, cpu_s):
    """Child side of one test; never returns. ``fds``: the test's stdin, stdout and return-value memfds."""
    code = 1
    try:
        os.setpgid(0, 0)
        os.close(result_fd)
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        fd_in, fd_out, fd_ret = fds
        fd_null = os.open("/dev/null", os.O_WRONLY)
        os.dup2(fd_in, 0)
        os.dup2(fd_out if job["mode"] == "stdio" else fd_null, 1)
        os.dup2(fd_null, 2)
        for fd in (fd_in, fd_out, fd_null) if job["mode"] == "call" else (fd_in, fd_out, fd_ret, fd_null):
            os.close(fd)
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8", errors="replace")
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", write_through=False)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8")
        if job["mode"] == "call":
            args = job["inputs"][idx]
        if job["degraded"]:
            _child_audit_hook(os.getcwd())
        try:
            _prctl(PR_SET_DUMPABLE, 1)
        except OSError:
            pass
        namespace = {"__name__": "__main__", "__builtins__": builtins}
        try:
            exec(compile(job["code"], "solution.py", "exec"), namespace)  # noqa: S102 - this is the sandbox
            if job["mode"] == "call":
                fn_name = job["fn_name"]
                if "Solution" in namespace and hasattr(namespace["Solution"], fn_name):
                    fn = getattr(namespace["Solution"](), fn_name)
                else:
                    fn = namespace[fn_name]
                value = fn(*args)
                if isinstance(value, tuple):
                    value = list(value)
                with os.fdopen(fd_ret, "w", encoding="utf-8") as f:
                    json.dump(value, f)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            try:
                sys.stdout.flush()
            except Exception:  # noqa: BLE001
                code = code or 1
    except BaseException:  # noqa: BLE001 - any failure of the program is a failed test
        code = 1
    os._exit(code & 0xFF)


def _wait(pid, timeout_s):
    """Wait for ``pid`` up to ``timeout_s`` seconds; returns (timed_out, wait status or None)."""
    pidfd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([pidfd], [], [], max(timeout_s, 0.0))
    finally:
        os.close(pidfd)
    if not ready:
        return True, None
    _, status = os.waitpid(pid, 0)
    return False, status


def _kill_everything(pgid, own_pid_namespace):
    """Kill the test's process group and, inside our own pid namespace, every other process we may signal
    (kill(-1) as PID 1 spares only ourselves). Without a pid namespace kill(-1) would hit the caller's other
    processes, so the degraded mode relies on the group kill (and its audit hook forbids forking)."""
    targets = [lambda: os.killpg(pgid, signal.SIGKILL)]
    if own_pid_namespace:
        targets.append(lambda: os.kill(-1, signal.SIGKILL))
    for target in targets:
        try:
            target()
        except (ProcessLookupError, PermissionError):
            pass


def _test_files(stdin_text):
    """Anonymous in-memory files (memfd) for one test's stdin, stdout and return value.

    They have no name in the work dir, so nothing the program plants there (a FIFO that blocks an open, a
    symlink that redirects one) can stall or misdirect the harness; RLIMIT_FSIZE still caps what the
    program writes to them, and the memory they use counts against the sandbox's memory limit.
    """
    fds = [os.memfd_create(f"primeflow-{name}", os.MFD_CLOEXEC) for name in ("in", "out", "ret")]
    data = stdin_text.encode("utf-8")
    written = 0
    while written < len(data):
        written += os.pwrite(fds[0], data[written:], written)
    return fds


def _read_capped(fd, cap, none_if_empty):
    data = os.pread(fd, cap + 1, 0)
    if none_if_empty and not data:
        return None, False  # call mode: the function never returned
    return data[:cap].decode("utf-8", errors="replace"), len(data) > cap


def main():
    start = time.monotonic()
    job = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    result_fd = os.dup(1)
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    out = os.fdopen(result_fd, "w", buffering=1)
    limits = job["limits"]
    uid = job["uid"]
    try:
        seccomp = _load_sibling("sandbox_seccomp") if job["seccomp"] else None
        if job["mode_isolation"] in ("root", "userns"):
            if job["cgroups"]:
                _join_cgroups(job["cgroups"])
            _load_sibling("sandbox_rootfs").enter_minimal_root(
                job["view"], limits["tmpfs_bytes"], WORKDIR, uid if job["mode_isolation"] == "root" else 0
            )
            os.chdir(WORKDIR)
        else:
            os.chdir(job["workdir"])
        _set_rlimits(limits)
        if job["drop_uid"]:
            _drop_privileges(uid)
        elif job["mode_isolation"] == "userns":
            _drop_all_capabilities()
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        _prctl(PR_SET_DUMPABLE, 0)
        if job["seccomp"]:
            seccomp.install()  # last: the steps above need calls it refuses (mount, pivot_root)
    except Exception as e:  # noqa: BLE001 - report, never run the program half-sandboxed
        out.write(json.dumps({"setup_error": f"{type(e).__name__}: {e}"}) + "\n")
        return 3
    os.environ.clear()
    os.environ.update(job["env"])
    out.write(json.dumps({"ready": True, "uid": os.getuid()}) + "\n")
    job["degraded"] = job["mode_isolation"] == "none"
    n = len(job["inputs"])
    timeout_s = float(job["timeout_s"])
    cpu_s = max(1, int(timeout_s + 0.999))
    for i in range(n):
        if time.monotonic() - start > job["deadline_s"]:
            out.write(json.dumps({"i": i, "status": "timeout", "exit": None, "out": None}) + "\n")
            continue
        fds = _test_files(job["inputs"][i] if job["mode"] == "stdio" else "")
        out.flush()
        pid = os.fork()
        if pid == 0:
            _run_child(job, i, fds, result_fd, cpu_s)
        timed_out, status = _wait(pid, timeout_s)
        _kill_everything(pid, not job["degraded"])
        if timed_out:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        _reap()
        record = {"i": i, "status": "timeout" if timed_out else "done", "exit": None, "out": None}
        if not timed_out:
            if os.WIFEXITED(status):
                record["exit"] = os.WEXITSTATUS(status)
            else:
                record["exit"] = -os.WTERMSIG(status)
                if os.WTERMSIG(status) == signal.SIGXCPU:
                    record["status"] = "timeout"  # the CPU-time limit (SIGKILL: OOM kill or hard CPU limit)
            fd = fds[1] if job["mode"] == "stdio" else fds[2]
            record["out"], record["truncated"] = _read_capped(fd, limits["output_bytes"], job["mode"] == "call")
        out.write(json.dumps(record) + "\n")
        for fd in fds:
            os.close(fd)
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
