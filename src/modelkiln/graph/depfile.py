"""doit's own database (`.kiln/doit.sqlite3`), looked at before doit opens it.

doit keeps its bookkeeping (task values) in an sqlite3 file; nothing modelkiln decides rests on it
(stamps and verdicts do), so losing it costs nothing. But doit opens it without a question: a file
that is not a database stops every command with doit's traceback, a FIFO or a device makes
sqlite fail with "disk I/O error", a directory with "unable to open database file". So:

- a regular file that does not start with sqlite's header, or is shorter than its header says
  (a torn write), is set aside as `doit.sqlite3.corrupt` and doit starts a fresh one (a miss);
- anything that is not a regular file is refused with one error: it was put there by someone,
  and deleting a directory or a device node is not this tool's call.

Checked with one non-blocking open and a 100-byte read; an absent or empty file is left to doit.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import KilnError

_MAGIC = b"SQLite format 3\x00"
_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def usable(path: Path) -> Path:
    """`path`, ready for doit: a damaged database set aside; KilnError when it is not a file."""
    try:
        fd = os.open(path, _FLAGS)
    except FileNotFoundError:
        return path
    except OSError as exc:  # a directory opens read-only on Linux; anything else lands here
        raise _not_a_file(path, exc.strerror or str(exc)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_a_file(path, "not a regular file (a FIFO, device, socket or directory)")
        header = os.pread(fd, 100, 0) if st.st_size else b""
    finally:
        os.close(fd)
    if st.st_size and not _intact(header, st.st_size):
        try:
            os.replace(path, path.with_name(path.name + ".corrupt"))
        except OSError as exc:
            raise KilnError(f"{path}: doit's database is damaged and cannot be set aside "
                            f"({exc.strerror or exc}); remove it and run again") from None
    return path


def _intact(header: bytes, size: int) -> bool:
    """sqlite's header is there and the file holds every page it claims (when that count is
    valid: the header's change counter equals its version-valid-for number)."""
    if len(header) < 100 or not header.startswith(_MAGIC):
        return False
    page = int.from_bytes(header[16:18], "big")
    page = 65536 if page == 1 else page
    pages = int.from_bytes(header[28:32], "big")
    counted = header[24:28] == header[92:96] and pages > 0
    return not (counted and page * pages > size)


def _not_a_file(path: Path, why: str) -> KilnError:
    return KilnError(f"{path}: {why}, where doit keeps its database; remove it and run again "
                     "(it holds nothing a build needs)")
