"""The checkpoint errors: what cannot be written or used, and a full disk told apart from other failures."""

from __future__ import annotations

import errno


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or used; the message names the file / step / setting at fault."""


class CheckpointDiskFull(CheckpointError):
    """A checkpoint write ran out of disk space (ENOSPC / EDQUOT on some rank)."""


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def disk_full(exc: BaseException | None) -> bool:
    """Whether `exc`, or an exception it was raised from or while handling, is a full disk. torch.save reports
    one as `RuntimeError: unexpected pos N vs M`, with the OSError only as its __context__."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False
