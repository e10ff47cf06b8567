"""Replace the sandbox's root by a minimal tree: the view's directories and files read-only, a private /tmp.

Loaded by sandbox_harness.py (stdlib only) in its private mount namespace, before the privilege drop. The new
root is a small tmpfs holding only:

- each directory and file of the view (sandbox_view.py: the interpreter, its libraries) bound read-only at
  its own path, and the symlinks on the way to them;
- /tmp: a size-limited tmpfs with the program's work dir (the only writable place);
- /dev: null, zero, full, random, urandom (bound from the host) and the fd/std* links;
- /proc: the sandbox's own (its pid namespace: no host process is visible).

Then pivot_root and a lazy unmount of the old root: the host tree is gone from this namespace, not covered
(an overmount can be looked under; a detached tree cannot). The host is untouched.
"""

from __future__ import annotations

import ctypes
import os

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC = 32, 4096, 16384
MNT_DETACH = 2
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}  # no C library wrapper
_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
_DEV_LINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
}
_LOCKED = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC  # statvfs ST_* bits equal these MS_* bits

_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    rc = _libc.mount(
        source.encode() if source else None,
        target.encode(),
        fstype.encode() if fstype else None,
        ctypes.c_ulong(flags),
        data.encode() if data else None,
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def _bind_read_only(fd: int, target: str, extra: int) -> None:
    """Bind the object held by ``fd`` at ``target``, then make that mount read-only.

    A remount must repeat the source mount's locked flags (in a user namespace, dropping nosuid/nodev/noexec
    or ro inherited from the host is refused), so they are read from the source first.
    """
    source = f"/proc/self/fd/{fd}"
    locked = os.statvfs(source).f_flag & _LOCKED
    _mount(source, target, None, MS_BIND)
    _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | extra | locked)


def _pivot_root(new_root: str, put_old: str) -> None:
    nr = _SYS_PIVOT_ROOT.get(os.uname().machine)
    if nr is None:
        raise OSError(0, f"pivot_root: no syscall number for {os.uname().machine}")
    if _libc.syscall(ctypes.c_long(nr), new_root.encode(), put_old.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"pivot_root into the sandbox root: {os.strerror(err)}")


def _placeholder(path: str, is_dir: bool) -> None:
    """An empty directory or file to mount on (parents created 0755: traversable by the sandbox uid)."""
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    if is_dir:
        os.makedirs(path, mode=0o755, exist_ok=True)
    else:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644))


def enter_minimal_root(view: dict, tmpfs_bytes: int, workdir: str, work_uid: int) -> None:
    """Make this mount namespace's root the minimal tree described above; ``workdir`` (under /tmp) is created
    0700 for ``work_uid``. Raises OSError when a step fails: the program must then not run."""
    dirs, files, links = view["dirs"], view["files"], view["links"]
    sources = [*dirs, *files, *_DEVICES, "/proc"]
    # Hold every source by an O_PATH descriptor: the new root is mounted on /tmp, which may contain a source
    # (a checkout with its venv under /tmp); /proc/self/fd/N still reaches the covered object.
    held: dict[str, int] = {}
    try:
        for p in sources:
            held[p] = os.open(p, os.O_PATH | os.O_CLOEXEC)
        targets = {link: os.readlink(link) for link in links}
        new = "/tmp"
        _mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=4096,mode=0755")
        _placeholder(new + "/tmp", True)
        _mount("tmpfs", new + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmpfs_bytes},mode=0755")
        os.mkdir(new + workdir, 0o700)
        os.chown(new + workdir, work_uid, work_uid)
        for p in dirs:
            _placeholder(new + p, True)
            _bind_read_only(held[p], new + p, MS_NODEV)
        for p in files:
            _placeholder(new + p, False)
            _bind_read_only(held[p], new + p, MS_NODEV | MS_NOEXEC)
        _placeholder(new + "/dev", True)
        _mount("tmpfs", new + "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "size=16k,mode=0755")
        for p in _DEVICES:
            _placeholder(new + p, False)
            _bind_read_only(held[p], new + p, MS_NOEXEC)  # (device nodes stay writable on a ro mount)
        for name, target in _DEV_LINKS.items():
            os.symlink(target, f"{new}/dev/{name}")
        _mount(None, new + "/dev", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NOEXEC)
        _placeholder(new + "/proc", True)
        _mount(f"/proc/self/fd/{held['/proc']}", new + "/proc", None, MS_BIND | MS_REC)
        _mount(None, new + "/proc", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
        for link, target in targets.items():
            if not os.path.lexists(new + link):
                os.makedirs(os.path.dirname(new + link), mode=0o755, exist_ok=True)
                os.symlink(target, new + link)
    finally:
        for fd in held.values():
            os.close(fd)  # an O_PATH descriptor to a host directory, left open, would be a way out
    os.mkdir(new + "/.old_root", 0o700)
    _pivot_root(new, new + "/.old_root")
    os.chdir("/")
    if _libc.umount2(b"/.old_root", MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"detaching the host root: {os.strerror(err)}")
    os.rmdir("/.old_root")
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
