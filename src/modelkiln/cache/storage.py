"""The two places a cache can live, behind one small interface: a local directory and S3.

Kept small on purpose so it can move onto a shared transport interface without touching the cache
logic: object names are '/'-separated keys under the cache root, and a few operations suffice
(size, small read, verified fetch, blob put, conditional put, and a listing of one prefix for
the TensorRT engine index).

- A blob put is unconditional: the key is the content's digest, so two writers write the same
  bytes; a multipart upload that is killed leaves no object at all.
- `put_if_absent` is the commit point for records. On S3 it is `If-None-Match: *` (412 means
  another writer won); on a directory it is `link(2)` of a complete file, which fails with
  EEXIST instead of replacing, so the first writer wins there too and a reader never sees a
  half-written record.
- `fetch` hashes while it writes and raises `Mismatch` when size or sha256 differ from what the
  record promised: the caller treats that as a miss. It never takes more than the record's size
  plus one byte, so a larger (or endless) blob costs no more than that; `read` likewise refuses
  what is over its limit instead of cutting it.
- In a directory only regular files are read: a symlink (even to /dev/zero), FIFO, device or
  directory where a record or blob should be is `Unusable` (a miss) without being opened, and
  no symlink below the cache root is followed. New files are anonymous (`O_TMPFILE`) until they
  are complete and linked into place, so a killed writer leaves no temp file in the cache (a
  file system without `O_TMPFILE` gets a named `.<name>.*.tmp`, removed on any error).
"""
from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from ..artifacts.atomic import fsync_dir, new_temp, readable_mode
from ..artifacts.digest import HashingWriter, sha256_bytes
from ..transport import s3 as s3t
from ..transport.uris import local_path, parse_s3, scheme_of

SMALL = 8 << 20  # below this a blob is one GET; above it, parallel ranged GETs
LIST_PAGE = 1000  # keys per ListObjectsV2 page (S3's maximum)
CHUNK = 1 << 20


class Mismatch(Exception):
    """Fetched bytes differ from the size or sha256 the record names."""


class Unusable(Mismatch):
    """An entry that is there but cannot be what the cache wrote: not a regular file, reached
    through a symlink, or larger than the reader's bound. A miss like a mismatch, never a reason
    to stop using the cache."""


# errors that describe the entry, not the cache: the one entry is a miss
_REFUSED = (errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ENXIO,
            errno.EACCES, errno.EPERM)


class Storage(Protocol):
    uri: str

    def size(self, key: str) -> int | None: ...
    def read(self, key: str, limit: int) -> bytes | None: ...
    def fetch(self, key: str, dest: Path, size: int, sha256: str) -> None: ...
    def put_file(self, key: str, path: Path) -> None: ...
    def put_if_absent(self, key: str, data: bytes) -> bool: ...
    def put(self, key: str, data: bytes) -> None: ...
    def list_keys(self, prefix: str) -> list[str]: ...


def _check(got: int, digest: str, size: int, sha256: str, what: str) -> None:
    if got != size or digest != sha256:
        raise Mismatch(f"{what}: {got} bytes with sha256 {digest[:12]}, the record says {size} "
                       f"bytes with {sha256[:12]}")


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
        _check(out.size, out.hexdigest(), size, sha256, key)

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


class S3Storage:
    """A cache under s3://bucket/prefix, through boto3's standard credential chain."""

    def __init__(self, uri: str, settings: s3t.TransferSettings = s3t.DEFAULT):
        self.uri = uri
        self.bucket, prefix = parse_s3(uri)
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.settings = settings
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = s3t.s3_client(self.settings)
        return self._client

    def _key(self, key: str) -> str:
        return self.prefix + key

    def _retry(self, what: str, action: Any) -> Any:
        return s3t.with_retries(f"{what} s3://{self.bucket}/", action, self.settings)

    def size(self, key: str) -> int | None:
        def head() -> int | None:
            try:
                return int(self.client.head_object(Bucket=self.bucket,
                                                   Key=self._key(key))["ContentLength"])
            except Exception as exc:
                if s3t.status_of(exc) == 404:
                    return None
                raise
        result: int | None = self._retry(f"HEAD {key}", head)
        return result

    def _fast(self, key: str, limit: int) -> bytes | None:
        """The stdlib-only signed GET (no boto3 import, which costs a cold runner ~0.4 s) where
        it applies; None means "ask boto3" (also for a missing object)."""
        from ..transport.s3lite import get_small

        return get_small(self.bucket, self._key(key), limit=limit) if self._client is None else None

    def read(self, key: str, limit: int) -> bytes | None:
        fast = self._fast(key, limit)
        if fast is not None:
            return fast

        def get() -> bytes | None:
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            except Exception as exc:
                if s3t.status_of(exc) == 404:
                    return None
                raise
            data: bytes = body.read(limit + 1)
            body.close()
            return data
        result: bytes | None = self._retry(f"GET {key}", get)
        if result is not None and len(result) > limit:  # refused, not cut to a torn prefix
            raise Unusable(f"{key}: larger than {limit} bytes")
        return result

    def fetch(self, key: str, dest: Path, size: int, sha256: str) -> None:
        from ..errors import PublishError
        from ..transport.ranged import s3_download

        fast = self._fast(key, size) if size <= SMALL else None
        if fast is not None:
            dest.write_bytes(fast)
            _check(len(fast), sha256_bytes(fast), size, sha256, key)
            return

        def once() -> tuple[int, str]:
            with open(dest, "wb") as raw:
                out = HashingWriter(raw)
                if size > SMALL:
                    s3_download(self.client, self.bucket, self._key(key), out, size=size,
                                settings=self.settings)
                else:
                    body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
                    for chunk in body.iter_chunks(CHUNK):
                        out.write(chunk[:size + 1 - out.size])
                        if out.size > size:  # more than the record says: stop, it is a miss
                            break
                    body.close()
            return out.size, out.hexdigest()

        try:
            got, digest = self._retry(f"GET {key}", once)
        except PublishError as exc:  # ranged download's own size check (HEAD) failed
            raise Mismatch(str(exc)) from None
        except Exception as exc:
            if s3t.status_of(exc) == 404:
                raise Mismatch(f"{key}: missing from the cache") from None
            raise
        _check(got, digest, size, sha256, key)

    def put_file(self, key: str, path: Path) -> None:
        config = s3t.transfer_config(self.settings)
        self._retry(f"PUT {key}", lambda: self.client.upload_file(
            str(path), self.bucket, self._key(key), Config=config))

    def put(self, key: str, data: bytes) -> None:
        self._retry(f"PUT {key}", lambda: self.client.put_object(
            Bucket=self.bucket, Key=self._key(key), Body=data))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        def put() -> bool:
            for attempt in range(5):
                try:
                    self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data,
                                           IfNoneMatch="*")
                    return True
                except Exception as exc:
                    status = s3t.status_of(exc)
                    if status == 412:
                        return False  # another writer's record is there: it wins
                    if status != 409 or attempt == 4:
                        raise
                    # 409: a concurrent conditional write is in flight; its outcome decides
                    time.sleep(0.2 * (attempt + 1))
            return False
        result: bool = self._retry(f"PUT {key}", put)
        return result

    def list_keys(self, prefix: str) -> list[str]:
        """Every key under `prefix`, sorted: ListObjectsV2, following continuation tokens
        (through the stdlib signed GET where it applies, like `read`: no boto3 import)."""
        from ..transport.s3lite import list_keys

        fast = list_keys(self.bucket, self._key(prefix), page=LIST_PAGE) \
            if self._client is None else None
        if fast is not None:
            return sorted(k[len(self.prefix):] for k in fast)

        def pages() -> list[str]:
            keys: list[str] = []
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix),
                                           PaginationConfig={"PageSize": LIST_PAGE}):
                keys.extend(o["Key"][len(self.prefix):] for o in page.get("Contents", []))
            return keys
        result: list[str] = self._retry(f"LIST {prefix}", pages)
        return sorted(result)


def open_storage(uri: str) -> Storage:
    if scheme_of(uri) == "s3":
        return S3Storage(uri)
    storage = LocalStorage(uri)
    with contextlib.suppress(OSError):
        storage.root.mkdir(parents=True, exist_ok=True)
    return storage
