"""The POSIX care a directory of objects (transport.local.LocalDir) takes on reads and writes.

Reads open regular files only: a symlink (even to /dev/zero), FIFO, device or directory where an
object should be is refused without being opened, and no symlink below the location's root is
followed (O_NOFOLLOW per path component, then fstat of what was opened); the root itself may be
a link, the user chose it. Writes fill an anonymous file (`O_TMPFILE`) and give it its name only
when it is complete, so a killed writer leaves nothing behind; a file system without it gets a
named `.<name>.*.tmp` (removed on any error, and by `LocalDir.clean_stale` after a kill).
No library offers "open below a root without following links" short of openat2(2), which Python
does not wrap, hence the component walk.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from ..artifacts.atomic import readable_mode

# errors that describe the entry, not the medium: the one object is unusable
REFUSED = (errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ENXIO,
           errno.EACCES, errno.EPERM)


class NotRegular(Exception):
    """The entry is there but is not a regular file reached without a symlink (the why)."""


def open_regular(root: Path, key: str) -> tuple[int, int] | None:
    """(fd, size) of the regular file `key` below `root`, reached without following a symlink
    below the root; None when absent; NotRegular when it is anything else. Other OSErrors (the
    medium failing) pass through."""
    parts = key.split("/")
    try:
        at = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        for part in parts[:-1]:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                            dir_fd=at)
            os.close(at)
            at = inner
        st = os.stat(parts[-1], dir_fd=at, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):  # never opened: a FIFO blocks, a device streams
            raise NotRegular("not a regular file")
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=at)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in REFUSED:
            raise NotRegular(exc.strerror or str(exc)) from None
        raise
    finally:
        os.close(at)
    st = os.fstat(fd)  # what was opened, in case the name changed after the stat
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotRegular("not a regular file")
    return fd, st.st_size


def anonymous(directory: Path) -> int | None:
    """An unnamed file in `directory` (O_TMPFILE, with the mode an ordinary new file gets), or
    None where the file system or /proc (through which it is linked into place) lacks it."""
    flag = getattr(os, "O_TMPFILE", 0)
    if not flag or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return os.open(directory, flag | os.O_WRONLY | os.O_CLOEXEC, readable_mode())
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            return None
        raise


def link_anonymous(fd: int, target: Path) -> None:
    """Give the anonymous file `fd` the name `target` (linkat with AT_SYMLINK_FOLLOW through
    /proc, which os.link does only when given a directory fd). FileExistsError when the name is
    taken: link(2) never replaces, which makes it the commit point of a first-writer-wins put."""
    at = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.link(f"/proc/self/fd/{fd}", target.name, dst_dir_fd=at, follow_symlinks=True)
    finally:
        os.close(at)
