"""What of the host a sandboxed program sees: the interpreter and its shared libraries, read-only, nothing else.

The harness (sandbox_rootfs.py) builds a fresh root from this list in the sandbox's private mount namespace:
each directory and file bound read-only at its own path, each symlink on the way recreated. Everything else
on the host (test data, checkouts, home directories, /opt, /srv, sockets, /sys) is simply absent.

- interpreter: the running Python's prefixes (base install and venv) whole, so that the stdlib, its C
  modules, site-packages and ``sys.executable`` work; where a prefix is a shared system root (``/usr``,
  ``/usr/local``, ``/``: a distribution's Python), only its Python directories and executable.
- libraries: the dynamic loader's search path (the standard lib dirs and those of /etc/ld.so.conf), plus
  /etc/ld.so.cache (without it the loader does not know where the libraries are).
"""

from __future__ import annotations

import functools
import glob
import os
import sys
import sysconfig
from dataclasses import dataclass, replace

_SYSTEM_ROOTS = frozenset({"/", "/usr", "/usr/local", "/opt", "/srv", "/var", "/home", "/root"})
_STANDARD_LIB_DIRS = ("/lib", "/lib64", "/lib32", "/libx32", "/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/libx32")
_FILES = ("/etc/ld.so.cache", "/etc/localtime")  # the loader's index; local time for time.localtime()


@dataclass(frozen=True)
class SandboxView:
    dirs: tuple[str, ...]  # bound read-only at the same path (real paths, none inside another)
    files: tuple[str, ...]  # single files bound read-only (real paths, not inside ``dirs``)
    links: tuple[str, ...]  # symlinks recreated with the same target (their parents are real directories)

    def with_dirs(self, *extra: str) -> SandboxView:
        """This view plus ``extra`` directories (tests use it to put a host object in the sandbox's sight)."""
        return replace(self, dirs=tuple(_outermost([*self.dirs, *(os.path.realpath(d) for d in extra)])))


def _under(p: str, q: str) -> bool:
    return p == q or p.startswith(q.rstrip("/") + "/")


def _outermost(paths: list[str]) -> list[str]:
    """The paths not inside another one of them."""
    unique = sorted(set(paths))
    return [p for p in unique if not any(_under(p, q) and p != q for q in unique)]


def _links_on_the_way(path: str) -> list[str]:
    """Every symlink met while resolving ``path`` (including links to links), each named under its real
    parent directory: the sandbox needs them to reach ``path`` by the name programs and the loader use."""
    found: list[str] = []
    todo = [os.path.abspath(path)]
    while todo and len(found) < 40:  # (40: the kernel's own limit on links followed in one lookup)
        p = todo.pop()
        parts = p.strip("/").split("/")
        for k in range(1, len(parts) + 1):
            a = "/" + "/".join(parts[:k])
            if os.path.islink(a):
                link = os.path.join(os.path.realpath(os.path.dirname(a)), os.path.basename(a))
                if link not in found:
                    found.append(link)
                target = os.path.join(os.path.dirname(a), os.readlink(a))
                todo.append(os.path.normpath(os.path.join(target, *parts[k:])))
                break
    return found


def _ld_so_conf_dirs(conf: str = "/etc/ld.so.conf", depth: int = 0) -> list[str]:
    """The directories named in ld.so.conf and the files it includes."""
    dirs: list[str] = []
    try:
        with open(conf) as f:
            lines = f.read().splitlines()
    except OSError:
        return dirs
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line.startswith("include") and depth < 4:
            for pattern in line.split()[1:]:
                pattern = pattern if os.path.isabs(pattern) else os.path.join(os.path.dirname(conf), pattern)
                for inc in sorted(glob.glob(pattern)):
                    dirs += _ld_so_conf_dirs(inc, depth + 1)
        elif line.startswith("/"):
            dirs.append(line.split()[0])
    return dirs


def _interpreter_paths() -> tuple[list[str], list[str], list[str]]:
    """(dirs, files, named paths) that the running interpreter needs."""
    dirs: list[str] = []
    files: list[str] = []
    named = [sys.executable]
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}:
        named.append(prefix)
        real = os.path.realpath(prefix)
        if real not in _SYSTEM_ROOTS:
            dirs.append(real)
            continue
        paths = sysconfig.get_paths(vars={"base": prefix, "platbase": prefix, "installed_base": prefix})
        for key in ("stdlib", "platstdlib", "purelib", "platlib"):
            if os.path.isdir(paths[key]):
                named.append(paths[key])
                dirs.append(os.path.realpath(paths[key]))
    files.append(os.path.realpath(sys.executable))
    return dirs, files, named


@functools.lru_cache(maxsize=1)
def sandbox_view() -> SandboxView:
    """The view for this process's interpreter and this machine's libraries (computed once)."""
    dirs, files, named = _interpreter_paths()
    for d in [*_STANDARD_LIB_DIRS, *_ld_so_conf_dirs()]:
        if os.path.isdir(d):
            named.append(d)
            dirs.append(os.path.realpath(d))
    files += [os.path.realpath(f) for f in _FILES if os.path.isfile(f)]
    named += [f for f in _FILES if os.path.isfile(f)]
    dirs = [d for d in _outermost(dirs) if d != "/"]
    files = sorted({f for f in files if not any(_under(f, d) for d in dirs)})
    links = sorted({link for p in named for link in _links_on_the_way(p) if not any(_under(link, d) for d in dirs)})
    return SandboxView(tuple(dirs), tuple(files), tuple(links))
