"""A local directory as a `Location`: S3's object semantics on a POSIX file system.

Every write fills an unnamed file (O_TMPFILE; where the file system lacks it, a temporary
`.<name>.*.tmp` beside its key) with ordinary read permissions (not mkstemp's 0600: serving
processes read these files under another uid), fsyncs it, and puts it in place in one step, so a
reader sees the old object, the new one or none, never a torn one:

- `IF_ABSENT`: link(2) of the complete file to the key, which fails when the name exists, on
  local disks and NFS alike: the on-disk twin of S3's `If-None-Match: *` (first writer wins).
- `ALWAYS`: `os.replace(temp, key)`.
- `if_match(etag)`: the key's etag is compared, then `os.replace`; not atomic (see objects.py).

Reads are strict (transport.localfs): regular files only, never through a symlink below the
root, never past their bound (`get_small`'s limit, `fetch`'s size plus one byte); anything else
is `Unusable`, which the action cache treats as a miss. The directory is fsynced after every
link, rename and unlink, so a crash cannot undo a write that was reported done.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from ..artifacts.atomic import fsync_dir, new_temp
from ..artifacts.digest import HashingWriter, sha256_file
from ..artifacts.extract import check_name
from ..errors import KilnError, PublishError
from .fetch import DigestMismatch, Missing, Progress, TooLarge, Unusable
from .localfs import NotRegular, anonymous, link_anonymous, open_regular
from .objects import ALWAYS, Condition, ObjectInfo, PreconditionFailed
from .s3 import DEFAULT, TransferSettings
from .uris import local_path

CHUNK = 256 << 10  # small reused-size pieces: multi-MiB ones page-fault on every allocation
STALE_S = 3600.0  # temporary files older than this are a killed writer's debris
SMALL_LIMIT = 64 << 20


def _etag(st: os.stat_result) -> str:
    return f"{st.st_dev:x}-{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"


class LocalDir:
    """The directory `root` (created on the first write) as a Location."""

    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def base_uri(self) -> str:
        return self.root.as_uri() + "/"

    def uri(self, key: str) -> str:
        return self.base_uri + key

    def _path(self, key: str) -> Path:
        why = check_name(key)
        if why:
            raise KilnError(f"{key!r}: not a usable object key ({why})")
        return self.root / key

    @contextlib.contextmanager
    def _io(self, what: str, key: str) -> Iterator[None]:
        """Turn an OSError into one PublishError line naming the path and the fix."""
        try:
            yield
        except OSError as exc:
            verb = "cannot read" if what == "read" else "cannot write"
            raise PublishError(f"{self.root / key}: {verb} ({exc.strerror or exc}); check the "
                               "path, its permissions and free space, then run the command "
                               "again") from None

    def _open(self, key: str) -> tuple[int, int] | None:
        """(fd, size) of the regular file `key` (transport.localfs), None when absent."""
        try:
            return open_regular(self.root, key)
        except NotRegular as exc:
            raise Unusable(self.uri(key), f"cannot read ({exc}); check that this user may "
                           "read it, or move it away, then run the command again") from None

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        with self._io("read", key):
            try:
                st = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                return None
        if not stat.S_ISREG(st.st_mode):
            raise Unusable(self.uri(key), "not a regular file; move it away, then run the "
                           "command again")
        return ObjectInfo(size=st.st_size, etag=_etag(st))

    def holds(self, key: str, size: int, sha256: str) -> bool:
        info = self.head(key)
        if info is None or info.size != size:
            return False
        with self._io("read", key):
            return sha256_file(self._path(key)) == sha256

    def get_small(self, key: str, limit: int = SMALL_LIMIT) -> bytes | None:
        self._path(key)
        with self._io("read", key):
            opened = self._open(key)
            if opened is None:
                return None
            with os.fdopen(opened[0], "rb") as f:
                data = f.read(limit + 1) if opened[1] <= limit else b""
        if opened[1] > limit or len(data) > limit:  # refused, never cut to a torn prefix
            raise TooLarge(self.uri(key), limit, "manifest or record")
        return data

    def fetch(self, key: str, dest: Path, *, size: int, sha256: str,
              progress: Progress | None = None) -> None:
        """Copy at most `size` + 1 bytes, hashing them as they are written."""
        self._path(key)
        with self._io("read", key):
            opened = self._open(key)
            if opened is None:
                raise Missing(self.uri(key))
            with os.fdopen(opened[0], "rb") as src, open(dest, "wb") as raw:
                out = HashingWriter(raw)
                while out.size <= size and (chunk := src.read(min(CHUNK, size + 1 - out.size))):
                    out.write(chunk)
                    if progress:
                        progress(len(chunk))
        if out.size != size or out.hexdigest() != sha256:
            dest.unlink(missing_ok=True)
            raise DigestMismatch(self.uri(key), size, out.size, sha256, out.hexdigest())

    def put_bytes(self, key: str, data: bytes, condition: Condition = ALWAYS, *,
                  content_type: str = "application/json") -> ObjectInfo:
        def fill(out: BinaryIO) -> None:
            out.write(data)
        return self._write(key, fill, condition)

    def upload_file(self, key: str, path: Path, *, size: int, sha256: str,
                    condition: Condition = ALWAYS, progress: Progress | None = None,
                    content_type: str = "application/octet-stream") -> ObjectInfo:
        def fill(out: BinaryIO) -> None:
            hashing = HashingWriter(out)  # hash what is copied, not in a second read
            with open(path, "rb") as src:
                while chunk := src.read(CHUNK):
                    hashing.write(chunk)
                    if progress:
                        progress(len(chunk))
            if hashing.size != size or hashing.hexdigest() != sha256:
                raise PublishError(f"{path}: changed while it was being copied; rebuild it and "
                                   "run the command again")
        return self._write(key, fill, condition)

    def _write(self, key: str, fill: Callable[[BinaryIO], None],
               condition: Condition) -> ObjectInfo:
        target = self._path(key)
        with self._io("write", key):
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = anonymous(target.parent), None
            if fd is None:
                fd, tmp = new_temp(target)
            try:
                with os.fdopen(fd, "wb") as out:
                    fill(out)
                    out.flush()
                    os.fsync(out.fileno())
                    info = ObjectInfo(size=out.tell(), etag=_etag(os.fstat(out.fileno())))
                    if tmp is None and condition.if_absent:
                        self._link_first(out.fileno(), target, key, condition)
                    elif tmp is None:  # named only now: a killed writer left nothing
                        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
                        link_anonymous(out.fileno(), tmp)
                if tmp is not None:
                    self._place(tmp, target, key, condition)
            finally:
                if tmp is not None:
                    with contextlib.suppress(FileNotFoundError):
                        tmp.unlink()
            fsync_dir(target.parent)
        return info

    def _link_first(self, fd: int, target: Path, key: str, condition: Condition) -> None:
        try:
            link_anonymous(fd, target)
        except FileExistsError:
            raise PreconditionFailed(self.uri(key), condition) from None

    def _place(self, tmp: Path, target: Path, key: str, condition: Condition) -> None:
        if condition.if_absent:
            try:
                os.link(tmp, target)
            except FileExistsError:
                raise PreconditionFailed(self.uri(key), condition) from None
            return
        if condition.if_match is not None:
            now = self.head(key)
            if now is None or now.etag != condition.if_match:
                raise PreconditionFailed(self.uri(key), condition)
        os.replace(tmp, target)

    def list_keys(self, prefix: str = "") -> list[str]:
        base = self.root / prefix if prefix else self.root
        with self._io("read", prefix):
            found = [p.relative_to(self.root).as_posix() for p in base.rglob("*")
                     if p.is_file() and not p.name.startswith(".")] if base.is_dir() else []
        return sorted(found)

    def delete(self, key: str) -> None:
        path = self._path(key)
        with self._io("write", key):
            try:
                path.unlink()
            except FileNotFoundError:
                return
            fsync_dir(path.parent)

    def ensure(self) -> None:
        """Create the directory when it can be (transport.objects.ensure); an error to create
        it is left to the first write, which reports it."""
        with contextlib.suppress(OSError):
            self.root.mkdir(parents=True, exist_ok=True)

    def clean_stale(self, older_than: float = STALE_S) -> None:
        """Remove `.*.tmp` files older than `older_than` seconds in the directory itself."""
        now = time.time()
        try:
            entries = list(self.root.iterdir())
        except OSError:
            return  # absent or unreadable: the write that follows reports it
        for entry in entries:
            if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    if entry.is_file() and now - entry.lstat().st_mtime > older_than:
                        entry.unlink()


__all__ = ["LocalDir", "local_path", "open_location"]  # local_path: a capability (schemes)


def open_location(uri: str, settings: TransferSettings = DEFAULT) -> LocalDir:
    """The transport registry's entry for file:// URIs and plain paths (transport.schemes)."""
    return LocalDir(local_path(uri))
