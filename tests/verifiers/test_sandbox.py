"""Adversarial programs in the code sandbox. Each test asserts the score AND that the call returned within
its limits, that no process of the sandbox survived, and that nothing was written outside its temp dir —
checked on the machine itself (sandbox_checks.py), not from what the sandbox reports."""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from primeflow.trainer.verifiers import SandboxLimits, code_counters, code_score, sandbox_status
from primeflow.trainer.verifiers import sandbox as sandbox_mod

from .sandbox_checks import OpenWatch, run_checked  # noqa: TID252


@pytest.fixture
def host_dir():
    """A directory outside /tmp (not hidden by the sandbox's private /tmp) holding a root-only secret file
    and a world-writable subdirectory: only the read-only remount and the uid drop protect them."""
    d = Path("/var/lib") / f"primeflow-verifier-test-{uuid.uuid4().hex[:12]}"
    d.mkdir(mode=0o755)
    (d / "secret").write_text("top-secret-" + uuid.uuid4().hex)
    os.chmod(d / "secret", 0o600)
    (d / "open").mkdir()
    os.chmod(d / "open", 0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_isolation_is_active_here():
    status = sandbox_status()
    if os.geteuid() != 0:
        pytest.skip("dev/CI machines run as root; this checks the root isolation path")
    assert status.isolation == "root", status.reason


def test_infinite_loops_time_out():
    before = code_counters()["code/timeouts"]
    assert run_checked("while True:\n    pass", ["1\n", "2\n"], ["1", "2"], timeout_s=1.0) == 0.0
    assert run_checked("import time\ntime.sleep(1000)", ["1\n"], ["1"], timeout_s=1.0) == 0.0  # wall, not CPU
    assert code_counters()["code/timeouts"] == before + 3


def test_fork_bomb_is_contained():
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    assert run_checked(bomb, ["x\n"], ["x"], timeout_s=2.0) == 0.0


@pytest.mark.parametrize(
    "program",
    [
        "x = bytearray(1 << 36)\nprint('survived')",  # one huge allocation: RLIMIT_AS
        "chunks = []\nwhile True:\n    chunks.append(b'x' * (64 << 20))",  # gradual growth
        # many processes, each under the per-process limit: only the sandbox-wide memory limit stops this
        "import os\nfor _ in range(12):\n    if os.fork() == 0:\n        b = b'x' * (700 << 20)\n"
        "        import time; time.sleep(30)\nimport time\ntime.sleep(30)",
    ],
    ids=["huge", "gradual", "forked"],
)
def test_memory_bombs_score_zero(program):
    assert run_checked(program, ["\n"], ["survived"], timeout_s=3.0) == 0.0


def test_output_flood_is_cut():
    flood = "while True:\n    print('x' * 100000)"
    assert run_checked(flood, ["\n"], ["x"], timeout_s=3.0) == 0.0
    limits = SandboxLimits()
    run = sandbox_mod.run_in_sandbox(flood, mode="stdio", inputs=["\n"], fn_name=None, timeout_s=3.0, limits=limits)
    (rec,) = run.records
    assert rec["exit"] != 0  # stopped by the file-size limit (SIGXFSZ), not left to fill memory
    assert rec["out"] is None or len(rec["out"]) <= limits.output_bytes  # what comes back is capped


def test_writes_outside_are_contained(host_dir, tmp_path):
    nonce = uuid.uuid4().hex[:10]
    targets = [
        str(host_dir / "open" / "escape.txt"),  # world-writable dir on the host root fs
        str(host_dir / "escape.txt"),
        f"/var/tmp/pf-escape-{nonce}",
        f"/dev/shm/pf-escape-{nonce}",
        f"/run/lock/pf-escape-{nonce}",
        f"/tmp/pf-escape-{nonce}",
        str(tmp_path / "escape.txt"),
        "/root/pf-escape",
        "/etc/pf-escape",
    ]
    program = f"""
import os
escaped = []
for p in {targets!r}:
    try:
        with open(p, 'w') as f:
            f.write('pwned')
        escaped.append(p)
    except OSError:
        pass
try:
    os.makedirs('/var/tmp/pf-dir-{nonce}/x')
    escaped.append('mkdir')
except OSError:
    pass
with open('inside.txt', 'w') as f:  # its own temp dir is writable
    f.write('ok')
print(open('inside.txt').read() if not escaped else 'ESCAPED ' + ' '.join(escaped))
"""
    assert run_checked(program, ["\n"], ["ok"], extra_roots=(str(host_dir), str(tmp_path))) == 1.0
    for p in [*targets, f"/var/tmp/pf-dir-{nonce}"]:
        assert not os.path.exists(p), p


def test_secrets_are_unreadable(host_dir, monkeypatch):
    secret = (host_dir / "secret").read_text()
    monkeypatch.setenv("PRIMEFLOW_FAKE_API_KEY", "sk-" + secret)
    read_file = f"print(open({str(host_dir / 'secret')!r}).read())"
    watch = OpenWatch(host_dir)
    try:
        assert run_checked(read_file, ["\n"], [secret]) == 0.0
        assert watch.events() == [], "the sandbox opened the secret (or listed its directory)"
    finally:
        watch.close()
    read_env = "import os\nprint(os.environ.get('PRIMEFLOW_FAKE_API_KEY', 'none'))"
    assert run_checked(read_env, ["\n"], ["sk-" + secret]) == 0.0
    first_shadow_line = Path("/etc/shadow").read_text().splitlines()[0] if os.access("/etc/shadow", os.R_OK) else "x"
    assert run_checked("print(open('/etc/shadow').readline())", ["\n"], [first_shadow_line]) == 0.0
    # the parent's other files (e.g. its environ, its /proc entries) are not reachable either
    parent_env = f"print(open('/proc/{os.getpid()}/environ').read())"
    assert run_checked(parent_env, ["\n"], [Path(f"/proc/{os.getpid()}/environ").read_text()]) == 0.0


def test_no_network():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    program = f"""
import socket
ok = []
for host in ('127.0.0.1', '1.1.1.1'):
    try:
        socket.create_connection((host, {port} if host == '127.0.0.1' else 53), timeout=1).close()
        ok.append(host)
    except OSError:
        pass
try:
    socket.getaddrinfo('pypi.org', 443)
    ok.append('dns')
except OSError:
    pass
print('connected' if ok else 'offline')
"""
    try:
        assert run_checked(program, ["\n"], ["connected"]) == 0.0
        assert run_checked(program, ["\n"], ["offline"]) == 1.0  # the honest fraction: it ran, was offline
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody ever connected
    finally:
        listener.close()


def test_background_processes_do_not_survive():
    program = """
import os, signal, subprocess, sys, time
subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], start_new_session=True)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        while True:
            time.sleep(0.1)
    os._exit(0)
print('spawned')
"""
    # it prints the right answer, so it passes (honest score); what matters is that nothing outlives it
    assert run_checked(program, ["\n", "\n"], ["spawned", "spawned"]) == 1.0


def test_cannot_kill_the_harness_or_forge_results():
    forger = """
import os, signal, json
for sig_target in (1, -1):
    try:
        os.kill(sig_target, signal.SIGKILL)
    except OSError:
        pass
forged = ''.join(json.dumps({'i': k, 'status': 'done', 'exit': 0, 'out': 'FORGED'}) + '\\n' for k in range(2))
for fd in range(3, 32):
    for path in (f'/proc/1/fd/{fd}', f'/proc/self/fd/{fd}'):
        try:
            with open(path, 'w') as f:
                f.write(forged)
        except OSError:
            pass
"""
    before = code_counters()
    assert run_checked(forger, ["\n", "\n"], ["FORGED", "FORGED"]) == 0.0
    after = code_counters()
    assert after["code/setup_errors"] == before["code/setup_errors"]
    assert after["code/killed"] == before["code/killed"]  # the harness lived on and reported


def test_degraded_mode_is_explicit_and_still_restrictive(monkeypatch, tmp_path):
    forced = replace(sandbox_status(), isolation="none", cgroups=False, reason="forced by test")
    monkeypatch.setattr(sandbox_mod._PROBE, "status", forced)
    with pytest.raises(RuntimeError, match="cannot isolate"):
        code_score("print(1)", {"inputs": ["\n"], "outputs": ["1"]}, limits=SandboxLimits(require_isolation=True))
    assert run_checked("print(int(input()) + 1)", ["1\n"], ["2"]) == 1.0
    net = "import socket\ntry:\n    socket.socket()\n    print('net')\nexcept PermissionError:\n    print('no')"
    assert run_checked(net, ["\n"], ["net"]) == 0.0
    fork = "import os\ntry:\n    os.fork()\n    print('forked')\nexcept PermissionError:\n    print('no')"
    assert run_checked(fork, ["\n"], ["forked"]) == 0.0
    target = tmp_path / "escape.txt"
    write = (
        f"try:\n    open({str(target)!r}, 'w').write('x')\n    print('wrote')\nexcept PermissionError:\n    print('no')"
    )
    assert run_checked(write, ["\n"], ["wrote"], extra_roots=(str(tmp_path),)) == 0.0
    assert not target.exists()


def test_user_namespace_mode(monkeypatch, host_dir):
    """The non-root fallback (forced here): same namespaces via a user namespace, every capability dropped."""
    forced = replace(sandbox_status(), isolation="userns", cgroups=False, reason="forced by test")
    monkeypatch.setattr(sandbox_mod._PROBE, "status", forced)
    assert run_checked("print(int(input()) * 3)", ["4\n"], ["12"]) == 1.0
    probe = f"""
import ctypes, os, socket
bad = []
try:  # root of its own user namespace is the host's root uid: only the minimal root hides this 0600 file
    open({str(host_dir / "secret")!r}).read()
    bad.append('read')
except OSError:
    pass
caps = [l for l in open('/proc/self/status') if l.startswith('CapEff')][0].split()[1]
if int(caps, 16):
    bad.append('caps')
try:
    socket.create_connection(('1.1.1.1', 53), timeout=1)
    bad.append('net')
except OSError:
    pass
for p in ({str(host_dir / "open" / "x")!r}, '/var/tmp/pf-userns-x'):
    try:
        open(p, 'w').write('x')
        bad.append(p)
    except OSError:
        pass
if ctypes.CDLL(None).mount(b'tmpfs', b'/var', b'tmpfs', 0, None) == 0:
    bad.append('mount')
print(bad or 'contained')
"""
    watch = OpenWatch(host_dir)
    try:
        assert run_checked(probe, ["\n"], ["contained"], extra_roots=(str(host_dir),)) == 1.0
        # (run_checked itself lists host_dir afterwards, looking for escaped files: only the secret counts)
        assert [e for e in watch.events() if e.startswith("secret ")] == []
    finally:
        watch.close()
    assert not (host_dir / "open" / "x").exists()


def test_memory_limit_covers_the_whole_sandbox():
    """Three processes of 500 MB each stay under the per-process address-space limit (1 GiB) but not under
    the sandbox-wide cgroup memory limit (1 GiB): one of them must be OOM-killed."""
    if not sandbox_status().cgroups:
        pytest.skip("no writable cgroup v1 memory hierarchy: only per-process limits apply")
    program = """
import os, time
kids = []
for _ in range(3):
    pid = os.fork()
    if pid == 0:
        b = b'x' * (500 << 20)
        time.sleep(1.5)
        os._exit(0)
    kids.append(pid)
ok = all(os.waitpid(k, 0)[1] == 0 for k in kids)
print('all alive' if ok else 'oom')
"""
    assert run_checked(program, ["\n"], ["oom"], timeout_s=5.0) == 1.0


def test_a_sandbox_that_cannot_start_scores_zero_and_is_counted(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(sandbox_mod, "HARNESS", tmp_path / "missing_harness.py")
    before = code_counters()["code/setup_errors"]
    with caplog.at_level("ERROR"):
        assert run_checked("print(1)", ["\n"], ["1"]) == 0.0
    assert code_counters()["code/setup_errors"] == before + 1
    assert "code sandbox failed to start" in caplog.text
