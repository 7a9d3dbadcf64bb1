"""The fetch cache: remote source files by content, shared by every bundle and run on a machine.

Layout under the root (`KILN_SOURCE_CACHE`, else `$XDG_CACHE_HOME/modelkiln/sources`):
    blobs/<2 hex>/<sha256>     one file per content, read-only, written once, renamed into place
    partial/<sha256>.part      a fetch in progress: always a prefix of the file, so a killed fetch
                               resumes where it stopped (its bytes are hashed again, not trusted)
    locks/<sha256>             flock'd while one process fetches that content: a second build
                               waiting on it finds the blob and fetches nothing
    trees/<tree digest>/<path> relative symlinks to blobs: the directory a stage reads a source as

Bounded by `KILN_SOURCE_CACHE_MAX` (bytes, or with a K/M/G/T suffix; default 100G): after a fetch,
blobs least recently used (mtime, refreshed on every use) are removed until the total fits, never
one the current fetch needs. A tree whose blob was evicted is just incomplete: the next stage that
needs it fetches the blob again. Trees are symlinks rather than hard links for that reason.
"""
from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import KilnError
from .lockfile import LockedFile, LockEntry

DEFAULT_MAX = 100 << 30
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def root_dir() -> Path:
    """Where the cache lives (from the environment; not created here)."""
    env = os.environ.get("KILN_SOURCE_CACHE")
    if env:
        return Path(env).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "modelkiln", "sources").absolute()


def max_bytes() -> int:
    text = os.environ.get("KILN_SOURCE_CACHE_MAX", "").strip().upper().removesuffix("B")
    m = re.fullmatch(r"(\d+)([KMGT]?)I?", text)
    if not text:
        return DEFAULT_MAX
    if m is None:
        raise KilnError(f"KILN_SOURCE_CACHE_MAX={text!r}: not a size; write bytes or e.g. 50G")
    return int(m[1]) * _UNITS[m[2]]


class FetchCache:
    def __init__(self, root: Path | None = None):
        self.root = root or root_dir()

    def blob(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256[:2] / sha256

    def part(self, sha256: str) -> Path:
        return self.root / "partial" / f"{sha256}.part"

    def tree_dir(self, entry: LockEntry) -> Path:
        return self.root / "trees" / entry.tree

    def has(self, sha256: str, size: int) -> bool:
        try:
            return self.blob(sha256).stat().st_size == size
        except OSError:
            return False

    @contextmanager
    def locked(self, sha256: str) -> Iterator[None]:
        """Exclusive use of one content's fetch, across processes and threads."""
        path = self.root / "locks" / sha256
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def commit(self, part: Path, sha256: str) -> Path:
        """Move a verified part file into place as the blob (read-only)."""
        dest = self.blob(sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(part, 0o444)
        os.replace(part, dest)
        return dest

    def touch(self, sha256: str) -> None:
        """Mark a blob used now (the LRU order)."""
        try:
            os.utime(self.blob(sha256))
        except OSError:
            pass

    def link(self, entry: LockEntry, f: LockedFile) -> Path:
        """The tree path of `f`, a relative symlink to its blob (made when absent or wrong)."""
        tree = self.tree_dir(entry)
        dest = tree / f.path
        target = os.path.relpath(self.blob(f.sha256), dest.parent)
        try:
            if os.readlink(dest) == target:
                return dest
        except OSError:
            pass
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        os.symlink(target, tmp)
        os.replace(tmp, dest)
        return dest

    def evict(self, keep: set[str], limit: int | None = None) -> int:
        """Remove least recently used blobs (never those in `keep`) until the total is at most
        `limit`; returns the bytes freed."""
        limit = max_bytes() if limit is None else limit
        blobs: list[tuple[int, int, Path]] = []
        total = 0
        for sub in (self.root / "blobs").glob("*/*"):
            try:
                st = sub.stat()
            except OSError:
                continue
            total += st.st_size
            if sub.name not in keep:
                blobs.append((st.st_mtime_ns, st.st_size, sub))
        freed = 0
        for _mtime, size, path in sorted(blobs):
            if total - freed <= limit:
                break
            try:
                path.unlink()
                freed += size
            except OSError:
                continue
        return freed
