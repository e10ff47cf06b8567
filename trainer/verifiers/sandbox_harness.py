"""In-sandbox test harness: runs as PID 1 of fresh pid/mount/net/ipc/uts namespaces (see sandbox.py).

Executed as a standalone script (``python -I sandbox_harness.py``, stdlib only), it reads one JSON job on
stdin, then:

1. as root (root mode only): joins the slot's cgroups (pids.max, memory limit), remounts every mount of its
   private mount namespace read-only, mounts a size-limited tmpfs on /tmp (the program's fresh working dir,
   gone when the namespace dies), sets rlimits (address space, file size, process count, open files, no
   core files), drops to the slot's unprivileged uid/gid with no groups, sets no_new_privs;
2. makes itself non-dumpable (so the program, same uid, cannot open /proc/1/fd/* to forge results) and asks
   for SIGKILL if its parent (``unshare``) dies;
3. for each test: forks a child in its own process group with a CPU-time rlimit, stdin from the test input,
   stdout to a file, stderr to /dev/null; runs the program there (stdin/stdout mode) or calls
   ``Solution().fn(*args)`` / ``fn(*args)`` (call mode); waits up to the wall timeout, then SIGKILLs the
   group and every other process of the sandbox uid (``kill(-1)``: as PID 1 it is immune itself).
4. writes one JSON line per test to the result fd: status, exit code, raw output. The outputs are compared
   *outside* the sandbox, so the expected answers never enter it and cannot be read or forged.

When it exits, the kernel kills everything left in the pid namespace.
"""

import builtins
import ctypes
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
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
WORKDIR = "/tmp/work"
_MNT_FLAGS = {"ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}

_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option, arg):
    if _libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def _mount(source, target, fstype, flags, data):
    rc = _libc.mount(
        source.encode() if source else None,
        target.encode(),
        fstype.encode() if fstype else None,
        ctypes.c_ulong(flags),
        data.encode() if data else None,
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def _unescape(path):
    return path.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def _lock_down_filesystem(tmpfs_bytes, uid, expose, hide):
    """Every mount read-only in this private namespace; a fresh tmpfs for /tmp; empty ro tmpfs on the
    other world-writable places. Returns a list of mounts that could not be made read-only."""
    failed = []
    with open("/proc/self/mountinfo") as f:
        lines = f.read().splitlines()
    for line in lines:
        fields = line.split()
        target = _unescape(fields[4])
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for opt in fields[5].split(","):
            flags |= _MNT_FLAGS.get(opt, 0)  # keep locked per-mount flags as they are
        try:
            _mount(None, target, None, flags, None)
        except OSError:
            failed.append(target)
    # The interpreter or this package may live under a directory we are about to cover (a checkout and its
    # .venv under /tmp, say): hold each such exposed directory by an O_PATH descriptor first, and bind it back
    # read-only at its own path afterwards (/proc/self/fd/N still reaches the covered directory).
    covered = ["/tmp"] + [p for p in ("/var/tmp", "/dev/shm", "/dev/mqueue", "/run/lock", "/run/shm")
                          if os.path.isdir(p) and not os.path.islink(p)]
    held = [(p, os.open(p, os.O_PATH | os.O_DIRECTORY)) for p in _outermost(expose)
            if any(_under(p, c) and p != c for c in covered)]
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmpfs_bytes},mode=0755")
    for path in covered[1:]:
        try:
            _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=0755")
        except OSError:
            failed.append(path)
    for p, fd in held:
        os.makedirs(p, mode=0o755, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", p, None, MS_BIND | 0x4000, None)  # MS_REC
        _mount(None, p, None, MS_REMOUNT | MS_BIND | MS_RDONLY, None)
        os.close(fd)
    for path in covered[1:]:
        if path not in failed:
            _mount(None, path, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=0755")
    _hide_and_expose(hide, expose)
    os.mkdir(WORKDIR, 0o700)
    os.chown(WORKDIR, uid, uid)
    return [p for p in failed if os.access(p, os.W_OK) and p not in ("/proc", "/sys")]


def _first_blocked_ancestor(path):
    """The first directory on the way to ``path`` that other users cannot traverse (e.g. /root, 0700)."""
    parts = path.strip("/").split("/")
    for k in range(1, len(parts) + 1):
        a = "/" + "/".join(parts[:k])
        if not (os.stat(a).st_mode & 0o001):
            return a
    return None


def _under(p, q):
    return p == q or p.startswith(q.rstrip("/") + "/")


def _outermost(paths):
    """The paths not inside another one of them."""
    paths = sorted(set(paths))
    return [p for p in paths if not any(_under(p, q) and p != q for q in paths)]


def _hide_and_expose(hide, expose):
    """Cover ``hide`` dirs (home directories) with empty tmpfs, keeping the interpreter reachable.

    A Python under /root (pyenv) is readable by root only: after the uid drop the program could not import
    the stdlib. Home directories hold the caller's keys and tokens. In our private mount namespace each
    needed interpreter directory is bind-mounted aside, an empty tmpfs covers the hidden or blocking
    ancestor (hiding everything else in it), and the directory is bind-mounted back read-only at its own
    path. The host is untouched.
    """
    covers = [h for h in sorted(set(hide)) if os.path.isdir(h) and not os.path.islink(h)]
    groups = {h: [] for h in covers}
    for p in sorted(set(expose)):
        a = next((h for h in covers if _under(p, h) and p != h), None) or _first_blocked_ancestor(p)
        if a is None:
            continue
        group = groups.setdefault(a, [])
        if not any(_under(p, q) for q in group):
            group.append(p)
    staged = []
    for a, ps in groups.items():
        for p in ps:
            stage = f"/tmp/.stage{len(staged)}"
            os.mkdir(stage)
            _mount(p, stage, None, MS_BIND | 0x4000, None)  # MS_REC
            staged.append((stage, p))
        _mount("tmpfs", a, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=0755")
    for stage, p in staged:
        os.makedirs(p, mode=0o755, exist_ok=True)
        _mount(stage, p, None, MS_BIND | 0x4000, None)
        _mount(None, p, None, MS_REMOUNT | MS_BIND | MS_RDONLY, None)
        _libc.umount2(stage.encode(), 2)  # MNT_DETACH
        os.rmdir(stage)
    for a in groups:
        _mount(None, a, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "size=64k,mode=0755")


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


def _run_child(job, idx, in_path, out_path, ret_path, result_fd, cpu_s):
    """Child side of one test; never returns."""
    code = 1
    try:
        os.setpgid(0, 0)
        os.close(result_fd)
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        fd_in = os.open(in_path, os.O_RDONLY)
        fd_out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        fd_null = os.open("/dev/null", os.O_WRONLY)
        os.dup2(fd_in, 0)
        os.dup2(fd_out if job["mode"] == "stdio" else fd_null, 1)
        os.dup2(fd_null, 2)
        for fd in (fd_in, fd_out, fd_null):
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
                with open(ret_path, "w") as f:
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


def _read_capped(path, cap):
    try:
        with open(path, "rb") as f:
            data = f.read(cap + 1)
    except FileNotFoundError:
        return None, False
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
        if job["mode_isolation"] in ("root", "userns"):
            if job["cgroups"]:
                _join_cgroups(job["cgroups"])
            unsafe = _lock_down_filesystem(
                limits["tmpfs_bytes"],
                uid if job["mode_isolation"] == "root" else 0,
                job["expose_paths"],
                job["hide_paths"],
            )
            if unsafe:
                raise RuntimeError(f"could not make these mounts read-only: {unsafe}")
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
        in_path, out_path, ret_path = f".in{i}", f".out{i}", f".ret{i}"
        with open(in_path, "w", encoding="utf-8") as f:
            f.write(job["inputs"][i] if job["mode"] == "stdio" else "")
        for p in (out_path, ret_path):
            if os.path.exists(p):
                os.unlink(p)
        out.flush()
        pid = os.fork()
        if pid == 0:
            _run_child(job, i, in_path, out_path, ret_path, result_fd, cpu_s)
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
            path = out_path if job["mode"] == "stdio" else ret_path
            record["out"], record["truncated"] = _read_capped(path, limits["output_bytes"])
        out.write(json.dumps(record) + "\n")
        for p in (in_path, out_path, ret_path):
            try:
                os.unlink(p)
            except OSError:
                pass
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
