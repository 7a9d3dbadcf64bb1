"""A cache in a directory (file:// URI): the embedded default and shared-filesystem caches.

Only regular files are read: a symlink (even to /dev/zero), FIFO, device or directory where a
record or blob should be is `Unusable` (a miss) without being opened, and no symlink below the
cache root is followed (lstat, then O_NOFOLLOW per path component, then fstat of what was
opened). A blob is never read past the record's size plus one byte. New files are anonymous
(`O_TMPFILE`) until they are complete and linked into place, so a killed writer leaves no temp
file in the cache (a file system without `O_TMPFILE` gets a named `.<name>.*.tmp`, removed on
any error). `link(2)` fails with EEXIST instead of replacing: the commit point of a record.
"""
from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ..artifacts.atomic import fsync_dir, new_temp, readable_mode
from ..artifacts.digest import HashingWriter
from ..transport.uris import local_path
from .protocol import CHUNK, Mismatch, Unusable, check

# errors that describe the entry, not the cache: the one entry is a miss
_REFUSED = (errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ENXIO,
            errno.EACCES, errno.EPERM)


class LocalStorage:
    """A cache in a directory (file:// URI): the embedded default and shared-filesystem caches."""

    def __init__(self, uri: str):
        self.uri = uri
        self.root = local_path(uri)

    def _path(self, key: str) -> Path:
        return self.root / key

    def _open(self, key: str, limit: int) -> tuple[int, int] | None:
        """(fd, size) of the regular file `key`, reached without following a symlink below the
        root (the root itself may be one: the user chose it); None when absent; Unusable when
        it is anything else or over `limit` bytes."""
        parts = key.split("/")
        try:
            at = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
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
                raise Unusable(f"{key}: not a regular file")
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=at)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in _REFUSED:
                raise Unusable(f"{key}: {exc.strerror}") from None
            raise
        finally:
            os.close(at)
        st = os.fstat(fd)  # what was opened, in case the name changed after the stat
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            os.close(fd)
            raise Unusable(f"{key}: not a regular file of at most {limit} bytes")
        return fd, st.st_size

    def size(self, key: str) -> int | None:
        try:
            st = os.stat(self._path(key), follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def read(self, key: str, limit: int) -> bytes | None:
        opened = self._open(key, limit)
        if opened is None:
            return None
        with os.fdopen(opened[0], "rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:  # it grew after the stat
            raise Unusable(f"{key}: larger than {limit} bytes")
        return data

    def fetch(self, key: str, dest: Path, size: int, sha256: str) -> None:
        opened = self._open(key, size)
        if opened is None:
            raise Mismatch(f"{key}: missing from the cache")
        with os.fdopen(opened[0], "rb") as src, open(dest, "wb") as raw:
            out = HashingWriter(raw)
            while out.size <= size and (chunk := src.read(min(CHUNK, size + 1 - out.size))):
                out.write(chunk)
        check(out.size, out.hexdigest(), size, sha256, key)

    def put_file(self, key: str, path: Path) -> None:
        with open(path, "rb") as src:
            self._write(key, lambda f: _copy(src, f), replace=True)

    def put(self, key: str, data: bytes) -> None:
        self._write(key, lambda f: f.write(data), replace=True)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self._write(key, lambda f: f.write(data), replace=False)

    def _write(self, key: str, fill: Callable[[BinaryIO], object], replace: bool) -> bool:
        """Write a complete, fsynced file, then name it `key`. link(2) fails with EEXIST instead
        of replacing, so without `replace` the first writer wins; with it a present file is
        unlinked and the link retried (a reader in between sees a miss; the keys replaced are
        content-addressed blobs and the review index)."""
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        anonymous = _anonymous(target.parent)
        if anonymous is None:
            return self._write_named(target, fill, replace)
        with os.fdopen(anonymous, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
            if not _link(f.fileno(), target, replace):
                return False
        fsync_dir(target.parent)
        return True

    @staticmethod
    def _write_named(target: Path, fill: Callable[[BinaryIO], object], replace: bool) -> bool:
        """`_write` where the file system has no O_TMPFILE: a named temp file beside `target`."""
        fd, tmp = new_temp(target)
        try:
            with os.fdopen(fd, "wb") as f:
                fill(f)
                f.flush()
                os.fsync(f.fileno())
            if replace:
                os.replace(tmp, target)
            else:
                try:
                    os.link(tmp, target)
                except FileExistsError:
                    return False
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(target.parent)
        return True

    def list_keys(self, prefix: str) -> list[str]:
        """Every key under the directory `prefix` (ending in '/'), sorted; temp files left out."""
        base = self._path(prefix)
        found = [p.relative_to(self.root).as_posix() for p in base.rglob("*")
                 if p.is_file() and not p.name.startswith(".")] if base.is_dir() else []
        return sorted(found)


def _anonymous(directory: Path) -> int | None:
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


def _link(fd: int, target: Path, replace: bool) -> bool:
    """Give the anonymous file `fd` the name `target` (linkat with AT_SYMLINK_FOLLOW through
    /proc, which os.link uses only when given a directory fd). False when the name is taken and
    `replace` is off; with it on, the present file is unlinked and the link retried."""
    at = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    source = f"/proc/self/fd/{fd}"
    try:
        try:
            os.link(source, target.name, dst_dir_fd=at, follow_symlinks=True)
        except FileExistsError:
            if not replace:
                return False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target.name, dir_fd=at)
            with contextlib.suppress(FileExistsError):  # another writer's, just now
                os.link(source, target.name, dst_dir_fd=at, follow_symlinks=True)
    finally:
        os.close(at)
    return True


def _copy(src: BinaryIO, dst: BinaryIO) -> None:
    while chunk := src.read(CHUNK):
        dst.write(chunk)
