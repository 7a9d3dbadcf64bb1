"""Reading the small files signing trusts (keys, signatures, provenance) without blocking.

A path in a trust list or a bundle directory may name a FIFO (whose open() waits for a writer,
forever), a device (/dev/zero never ends) or a socket; `read_regular` refuses those by their file
type and reads a regular file up to a bound, so a hostile path costs one refusal line, never a
hang or a gigabyte of memory.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import KilnError, SignatureError


def read_regular(path: Path, what: str, limit: int, *, error: type[KilnError] = SignatureError,
                 fix: str = "check the path") -> bytes:
    """The bytes of the regular file `path`, at most `limit` of them; never blocks.

    Only a regular file is read: it is checked with stat before it is opened, opened with
    O_NONBLOCK (opening a FIFO that has no writer would wait forever; a device never ends) and
    checked again with fstat on the open descriptor, since the path may be swapped in between.
    Every refusal is one `error` line naming `what` and ending with `fix`.
    """
    def refuse(mode: int) -> KilnError:
        return error(f"{path}: not a regular file ({_kind(mode)}); {fix}")

    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise refuse(mode)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise refuse(info.st_mode)
            data = f.read(limit + 1) if info.st_size <= limit else b""
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror or exc}); {fix}") from None
    size = max(info.st_size, len(data))
    if size > limit:
        raise error(f"{path}: {size} bytes, over the {limit} byte limit for a {what}; {fix}")
    return data


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "another kind of file"
