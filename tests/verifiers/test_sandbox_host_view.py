"""What a sandboxed program can see and reach of the host: only the interpreter, its libraries and its own work
dir; no filesystem socket; no new user namespace; nothing planted in its work dir stalls the harness.

Each test checks the effect on the machine itself (inotify on the planted files, a listener that was never
connected to, the user namespace of every live sandbox process, the wall time), not only the score.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from primeflow.trainer.verifiers import SandboxLimits, code_score, sandbox_status
from primeflow.trainer.verifiers import sandbox as sandbox_mod

from .sandbox_checks import OpenWatch, run_checked, sandbox_processes, user_namespaces_of_sandbox  # noqa: TID252

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path("/work/shared/data")


def _isolating() -> None:
    if sandbox_status().isolation == "none":
        pytest.skip("no namespaces on this machine: the degraded mode cannot hide host paths")


@pytest.fixture(params=["probed", "userns"])
def isolation(request, monkeypatch) -> str:
    """The isolation this machine chose, and the non-root fallback (a user namespace) forced."""
    _isolating()
    if request.param == "userns":
        forced = replace(sandbox_status(), isolation="userns", cgroups=False, reason="forced by test")
        monkeypatch.setattr(sandbox_mod._PROBE, "status", forced)
    return sandbox_status().isolation


@pytest.fixture
def planted() -> Iterator[list[Path]]:
    """Fresh world-readable directories under /opt and /srv (outside every directory the old sandbox hid),
    each holding a copy of 'expected output' data, removed afterwards."""
    made = []
    for top in ("/opt", "/srv"):
        d = Path(top) / f"primeflow-sbx-test-{uuid.uuid4().hex[:12]}"
        d.mkdir(mode=0o755, parents=True)
        (d / "expected.txt").write_text("expected-" + uuid.uuid4().hex)
        os.chmod(d / "expected.txt", 0o644)
        made.append(d)
    yield made
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


def test_host_paths_outside_the_old_hidden_set_are_invisible(planted, isolation):
    secrets = [str(d / "expected.txt") for d in planted]
    host_paths = [str(d) for d in planted] + [str(REPO / "trainer"), "/etc/passwd", "/var", "/run", "/sys"]
    if SHARED_DATA.is_dir():
        host_paths.append(str(SHARED_DATA))  # the benchmark data with every expected output
    assert all(os.path.exists(p) for p in host_paths + secrets)
    program = f"""
import os
seen = [p for p in {host_paths!r} if os.path.exists(p)]
for p in {secrets!r}:
    try:
        print(open(p).read())
    except OSError:
        pass
print('seen', seen)
"""
    watches = [OpenWatch(d) for d in planted]
    try:
        assert run_checked(program, ["\n"], ["seen []"]) == 1.0  # it ran, and saw none of them
        assert [w.events() for w in watches] == [[], []], "the sandbox opened the planted files"
    finally:
        for w in watches:
            w.close()


def test_the_visible_tree_is_the_interpreter_its_libraries_and_the_work_dir():
    """Walk the sandbox's whole tree: every path is inside an exposed directory, the work dir or the
    sandbox's own /dev and /proc, or is a directory on the way to one of them."""
    _isolating()
    view = sandbox_mod.sandbox_view()
    roots = sorted({*view.dirs, *view.files, *view.links, "/tmp/work", "/dev", "/proc"})
    program = f"""
import os
roots = {roots!r}
def inside(p):
    return any(p == r or p.startswith(r.rstrip('/') + '/') for r in roots)
def above(p):
    return any(r.startswith(p.rstrip('/') + '/') for r in roots)
stray = []
for dirpath, dirnames, filenames in os.walk('/'):
    for name in dirnames + filenames:
        p = os.path.join(dirpath, name)
        if not inside(p) and not above(p):
            stray.append(p)
    dirnames[:] = [d for d in dirnames if not inside(os.path.join(dirpath, d))]
print('stray', sorted(stray)[:20])
"""
    assert run_checked(program, ["\n"], ["stray []"]) == 1.0
    must_stay_hidden = ["/opt/x", "/srv/x", "/var/x", "/run/x", "/home/x", str(REPO / "trainer"), str(SHARED_DATA)]
    for d in view.dirs:
        assert not any(h == d or h.startswith(d.rstrip("/") + "/") for h in must_stay_hidden), d


def test_filesystem_unix_sockets_are_unreachable(planted, monkeypatch, isolation):
    """A listening unix socket in a host dir (/opt: invisible) and in a directory the sandbox *is* shown
    (unix sockets are refused at socket(): no host service is reachable through a path)."""
    hidden_sock = planted[0] / "service.sock"
    exposed_dir = planted[1]
    exposed_sock = exposed_dir / "service.sock"
    if hasattr(sandbox_mod, "sandbox_view"):
        view = sandbox_mod.sandbox_view()
        monkeypatch.setattr(sandbox_mod, "sandbox_view", lambda: view.with_dirs(str(exposed_dir)))
    listeners = []
    for path in (hidden_sock, exposed_sock):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(path))
        os.chmod(path, 0o777)  # anyone may connect: only the sandbox stands in the way
        s.listen(8)
        s.setblocking(False)
        listeners.append(s)
    program = f"""
import os, socket
report = []
for name, path in (('hidden', {str(hidden_sock)!r}), ('exposed', {str(exposed_sock)!r})):
    state = 'visible' if os.path.exists(path) else 'absent'
    try:
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.settimeout(1)
        c.connect(path)
        state += '-connected'
    except OSError:
        state += '-refused'
    report.append(name + '=' + state)
try:
    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).bind('own.sock')
    report.append('own=bound')
except OSError:
    report.append('own=refused')
print(' '.join(report))
"""
    try:
        expected = "hidden=absent-refused exposed=visible-refused own=refused"
        assert run_checked(program, ["\n"], [expected]) == 1.0
        for s in listeners:
            with pytest.raises(BlockingIOError):
                s.accept()  # nobody ever connected
    finally:
        for s in listeners:
            s.close()


def test_user_namespaces_cannot_be_created():
    """unshare(CLONE_NEWUSER) and clone(CLONE_NEWUSER) fail; the test watches the user namespace of every live
    sandbox process while the program holds on after its attempts."""
    program = """
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER, CLONE_NEWNS, SIGCHLD = 0x10000000, 0x20000, 17
SYS_CLONE = {'x86_64': 56, 'aarch64': 220}.get(os.uname().machine)
made = []
if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) == 0:
    made.append('unshare')
    if libc.mount(b'tmpfs', b'/tmp', b'tmpfs', 0, None) == 0:  # what a new user namespace is good for
        made.append('mount')
if SYS_CLONE is not None:
    pid = libc.syscall(SYS_CLONE, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0)
    if pid == 0:
        time.sleep(1.5)
        os._exit(0)
    if pid > 0:
        made.append('clone')
time.sleep(1.5)
print('made', made)
"""
    host_ns = os.readlink("/proc/self/ns/user")
    seen: dict[int, str] = {}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.update(user_namespaces_of_sandbox())
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        score = run_checked(program, ["\n"], ["made []"], timeout_s=4.0)
    finally:
        done.set()
        watcher.join()
    assert seen, "the watcher saw no sandbox process: the check proved nothing"
    if sandbox_status().isolation == "root":  # (the userns mode runs in a user namespace of its own)
        assert set(seen.values()) == {host_ns}, f"a sandbox process entered a new user namespace: {seen}"
    assert score == 1.0


@pytest.mark.parametrize("mode", ["stdio", "call"])
def test_fifos_and_links_planted_in_the_work_dir_do_not_stall_the_harness(mode, isolation):
    """The first test plants FIFOs and symlinks under every name the harness might use for the later tests'
    input, output and return value; all tests must still run, at their normal speed."""
    names = [f".{kind}{k}" for kind in ("in", "out", "ret") for k in range(1, 6)]
    program = f"""
import os
for k, name in enumerate({names!r}):
    try:
        if k % 3 == 2:
            os.symlink('/proc/self/fd/0', name)
        else:
            os.mkfifo(name)
    except OSError:
        pass
def solve(x):
    return x + 1
if __name__ == '__main__' and {mode == "stdio"!r}:
    print(solve(int(input())))
"""
    n, timeout_s = 4, 1.0
    tests = (
        {"inputs": [f"{i}\n" for i in range(n)], "outputs": [str(i + 1) for i in range(n)]}
        if mode == "stdio"
        else {"inputs": [[i] for i in range(n)], "outputs": [i + 1 for i in range(n)], "fn_name": "solve"}
    )
    assert sandbox_processes() == []
    t0 = time.monotonic()
    score = code_score(f"```python\n{program}\n```", tests, timeout_s=timeout_s)
    elapsed = time.monotonic() - t0
    # a stalled harness runs to its deadline, startup_grace_s + n * (timeout_s + 0.5) = 21 s; the honest run
    # takes well under a second, so allow only start-up under load on top of the tests' own limits
    assert n * (timeout_s + 0.5) + 4.0 < SandboxLimits().startup_grace_s
    assert elapsed < n * (timeout_s + 0.5) + 4.0, f"took {elapsed:.1f} s"
    assert score == 1.0  # every test ran and was read back
    assert sandbox_processes() == []


def test_interpreter_still_works_inside():
    """The narrow view keeps what programs legitimately use: the stdlib's C modules, ctypes, a subprocess of
    the same interpreter, threads, the work dir, /dev/null and /dev/urandom."""
    program = """
import ctypes, decimal, hashlib, json, os, sqlite3, subprocess, sys, threading, zlib
t = threading.Thread(target=lambda: None); t.start(); t.join()
open('scratch.txt', 'w').write('ok')
os.urandom(8); open('/dev/null', 'w').write('x')
r = subprocess.run([sys.executable, '-c', 'print(6 * 7)'], capture_output=True, text=True, timeout=5)
print(r.stdout.strip(), open('scratch.txt').read(), zlib.crc32(b'a'), str(decimal.Decimal(1) / 4))
"""
    assert run_checked(program, ["\n"], [f"42 ok {zlib.crc32(b'a')} 0.25"], timeout_s=5.0) == 1.0
