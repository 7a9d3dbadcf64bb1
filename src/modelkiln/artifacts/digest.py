"""The one place that computes sha256 of files, and the stat cache that keeps us from doing it twice.

Everything that needs a file's digest (the up-to-date check, manifests, verify, the runtime
bootstrap, the store) calls `sha256_file` or `StatCache.digest`. `sha256_file` always reads the
bytes; `StatCache.digest` trusts a previous result while the file's (device, inode, size, mtime_ns,
ctime_ns) are unchanged, so an untouched file is never read again and a touched-but-identical one
is read once, not on every run. The ctime is there because the mtime can be put back (`touch -d`,
`cp -p`, `rsync -t`, `os.utime`) after a same-size edit; the ctime cannot be set from user space.
"""
from __future__ import annotations

import atexit
import errno
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from stat import S_ISREG
from typing import Any, BinaryIO

from .atomic import write_bytes
from .statefile import load_json

CHUNK = 1 << 20  # 1 MiB: large enough that Python overhead is noise next to OpenSSL's sha256
# A file modified this recently may be modified again within the same mtime tick without its stat
# changing ("racy git"); such entries are hashed but not remembered.
RACY_NS = 100_000_000

Progress = Callable[[int], None]


def sha256_file(path: str | os.PathLike[str], progress: Progress | None = None) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks into one reused buffer."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            if progress:
                progress(n)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes in memory (manifests, canonical JSON, params)."""
    return hashlib.sha256(data).hexdigest()


class HashingWriter:
    """A binary writer that hashes what passes through it, so a file we produce is never re-read
    just to learn its digest (the tarball)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def hexdigest(self) -> str:
        return self.hash.hexdigest()


def canonical_json(value: object) -> bytes:
    """The byte form we hash and write: sorted keys, no spaces, UTF-8, trailing newline."""
    return (json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


def aggregate(entries: Iterable[tuple[str, str]]) -> str:
    """Aggregate digest of (relative path, sha256) pairs: sha256 of `sha256  path` lines, sorted.

    The same text `sha256sum` prints, so a user can recompute it with coreutils.
    """
    lines = "".join(f"{digest}  {path}\n" for path, digest in sorted(entries))
    return sha256_bytes(lines.encode())


def _ident(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}"


_Entry = list[Any]  # [size, mtime_ns, sha256 hex, absolute path, ctime_ns], as stored in the file


def _match(hit: _Entry | None, st: os.stat_result) -> str | None:
    """The entry's digest when it is well-formed and was taken at this very stat, else None."""
    if (hit is not None and len(hit) == 5 and hit[0] == st.st_size and hit[1] == st.st_mtime_ns
            and hit[4] == st.st_ctime_ns and isinstance(hit[2], str)):
        return hit[2]
    return None


def settled(st: os.stat_result, now: int) -> bool:
    """Whether a stat is old enough to vouch for: neither its mtime nor its ctime is within
    RACY_NS of `now` (a second write within one timestamp tick could repeat both)."""
    return now - max(st.st_mtime_ns, st.st_ctime_ns) > RACY_NS


def _still_there(key: str, entry: _Entry) -> bool:
    try:
        return _ident(os.stat(entry[3])) == key
    except (OSError, IndexError, TypeError):
        return False


class StatCache:
    """(device, inode, size, mtime_ns, ctime_ns) -> sha256, persisted as one JSON file.

    Keyed by (device, inode), not by path, so a file hashed in a staging directory is still known
    after it is renamed into place; the path is kept only to drop entries for deleted files.

    The cache is an optimisation only: losing it, or losing a concurrent writer's entries, costs a
    re-hash, never a wrong answer about a file whose stat changed. So is a cache file that is
    corrupt, of another shape or not a regular file (statefile): it reads as empty.
    """

    VERSION = 3  # 3: entries carry the ctime

    def __init__(self, path: Path | None):
        self.path = path
        self._entries: dict[str, _Entry] = {}
        self._dirty = False
        self.hashed: list[str] = []  # paths actually read this process: benchmarks and tests look
        if path is not None:
            self._entries = self._read(path)

    @staticmethod
    def _read(path: Path) -> dict[str, _Entry]:
        data = load_json(path)
        if not isinstance(data, dict) or data.get("version") != StatCache.VERSION:
            return {}
        entries = data.get("entries")
        if not isinstance(entries, dict):
            return {}
        return {k: v for k, v in entries.items() if isinstance(v, list)}

    def digest(self, path: str | os.PathLike[str], progress: Progress | None = None) -> str:
        """sha256 of `path`, reading it only when its stat differs from the remembered one.
        OSError for a path that is not a regular file: a FIFO or a device would never end."""
        st = os.stat(path)
        if not S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
        key = _ident(st)
        hit = self._entries.get(key)
        known = _match(hit, st)
        if hit is not None and known is not None:
            # an absolute str equal to the entry's path needs no abspath (the no-op's hot path)
            if hit[3] != path and hit[3] != os.path.abspath(path):  # renamed since: remember it
                hit[3] = os.path.abspath(path)
                self._dirty = True
            return known
        value = sha256_file(path, progress)
        self.hashed.append(os.path.abspath(path))
        after = os.stat(path)
        if (settled(after, time.time_ns()) and after.st_mtime_ns == st.st_mtime_ns
                and after.st_ctime_ns == st.st_ctime_ns and after.st_size == st.st_size):
            self._entries[key] = _entry(st, value, path)
            self._dirty = True
        return value

    def remember(self, path: str | os.PathLike[str], digest: str) -> None:
        """Record the digest of a file this process has just written and computed itself."""
        st = os.stat(path)
        self._entries[_ident(st)] = _entry(st, digest, path)
        self._dirty = True

    def peek(self, path: str | os.PathLike[str]) -> str | None:
        """The remembered digest if the file's stat still matches, else None; never reads bytes."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        return _match(self._entries.get(_ident(st)), st)

    def save(self) -> None:
        """Merge our entries into the file on disk and replace it atomically."""
        if self.path is None or not self._dirty:
            return
        merged = self._read(self.path)
        merged.update(self._entries)
        # Drop entries for files that are gone so the cache does not grow without bound.
        merged = {k: v for k, v in merged.items() if _still_there(k, v)}
        try:  # not durable: losing the file costs re-hashing, nothing more
            write_bytes(self.path, canonical_json({"version": self.VERSION, "entries": merged}),
                        durable=False)
        except OSError:
            return  # a read-only or full state dir, or a directory in the file's place: speed only
        self._entries = merged
        self._dirty = False


def _entry(st: os.stat_result, digest: str, path: str | os.PathLike[str]) -> _Entry:
    return [st.st_size, st.st_mtime_ns, digest, os.path.abspath(path), st.st_ctime_ns]


_CACHES: dict[Path, StatCache] = {}


def stat_cache(state_dir: Path) -> StatCache:
    """The process-wide stat cache of a project (one per `.kiln/` directory), saved at exit.

    Saving merges and rewrites the whole file, so it happens once per process, not per task check
    (doit's worker processes exit without atexit hooks; `execute` saves there itself).
    """
    if state_dir not in _CACHES:
        cache = _CACHES[state_dir] = StatCache(state_dir / "hashcache.json")
        atexit.register(cache.save)
    return _CACHES[state_dir]


def hashed_this_process() -> list[str]:
    """Every path a project stat cache of this process really read (what a no-op must keep empty;
    the benchmarks report it)."""
    return [path for cache in _CACHES.values() for path in cache.hashed]
