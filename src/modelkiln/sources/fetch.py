"""Fetching locked files into the cache: in parallel, hashed as they stream, resumable, verified.

`ensure` is what a stage's run calls for its inputs: each locked file it needs and the cache
lacks is fetched once (a per-content flock makes a second process wait and then find it), into a
part file that is always a prefix of the content. A killed fetch leaves that prefix; the next one
hashes it and asks only for the rest. The finished file must have the locked size and sha256, or
it is removed and the fetch fails with exit 2 (drift): nothing is built from a byte that differs
from the lock. Memory: the S3 reader's bounded buffers (and 1 MiB to hash a resumed prefix).

The part file's remaining size is reserved up front with fallocate(FALLOC_FL_KEEP_SIZE): ext4
then allocates the blocks once instead of on every write (a quarter faster here, measured by
bench/bench_sources.py's fetch), while the file's size stays the prefix written so far.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import DriftError, FileChange
from .cache import FetchCache
from .lockfile import LockedFile, LockEntry
from .scheme import Reader, Stream, Write, reader
from .uris import parse

Log = Callable[[str], None]
CHUNK = 1 << 20


def jobs() -> int:
    """Files fetched at once (KILN_SOURCE_JOBS, default 4)."""
    try:
        return max(1, int(os.environ.get("KILN_SOURCE_JOBS", "4")))
    except ValueError:
        return 4


def drift(uri: str, f: LockedFile, kind: str, actual: str | None = None) -> DriftError:
    return DriftError(uri, [FileChange(f.path, kind, f.sha256 if kind == "changed" else None,
                                       actual)],
                      fix="the source changed after it was locked: if that is intended, review it "
                          "and run `kiln lock` for the bundle; if not, restore the locked files")


@functools.cache
def _fallocate() -> Callable[[int, int, int], None]:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.fallocate
        call.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    except (OSError, AttributeError):
        return lambda fd, offset, length: None

    def reserve(fd: int, offset: int, length: int) -> None:
        call(fd, 1, offset, length)  # FALLOC_FL_KEEP_SIZE; a failure only costs speed
    return reserve


def reserve(fd: int, offset: int, length: int) -> None:
    """Allocate [offset, offset+length) of an open file without changing its size (Linux; a
    no-op elsewhere or where the filesystem cannot)."""
    if length > 0:
        _fallocate()(fd, offset, length)


def _hash_prefix(part: Path, size: int) -> tuple[hashlib._Hash, int]:
    """The sha256 state of a part file's bytes (discarded when longer than the file can be)."""
    h = hashlib.sha256()
    try:
        have = part.stat().st_size
    except OSError:
        return h, 0
    if have > size:
        part.unlink()
        return h, 0
    buf = memoryview(bytearray(CHUNK))
    with open(part, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(buf[:n])
    return h, have


def fetch_file(cache: FetchCache, rd: Reader, uri: str, f: LockedFile) -> int:
    """Make the blob of `f` present; the bytes this call moved over the network (0 when the cache
    had it, or another process fetched it while this one waited)."""
    if cache.has(f.sha256, f.size):
        cache.touch(f.sha256)
        return 0
    with cache.locked(f.sha256):
        if cache.has(f.sha256, f.size):
            return 0
        part = cache.part(f.sha256)
        part.parent.mkdir(parents=True, exist_ok=True)
        h, offset = _hash_prefix(part, f.size)
        moved = 0
        with open(part, "ab") as out:
            reserve(out.fileno(), offset, f.size - offset)

            def write(data: bytes | memoryview) -> None:
                nonlocal moved
                h.update(data)
                out.write(data)
                moved += len(data)
            if offset < f.size:
                rd.stream(parse(uri), f, offset, write)
        size = offset + moved
        if size != f.size or h.hexdigest() != f.sha256:
            part.unlink(missing_ok=True)
            raise drift(uri, f, "changed", h.hexdigest() if size == f.size else f"{size} bytes")
        cache.commit(part, f.sha256)
        return moved


def ensure(entries: Iterable[LockEntry], wanted: dict[str, list[LockedFile]] | None = None,
           log: Log | None = None, cache: FetchCache | None = None) -> int:
    """Fetch (when absent) and place in their trees the files `wanted` names per source uri (every
    file of `entries` when None). Returns the bytes moved over the network."""
    cache = cache or FetchCache()
    todo: list[tuple[LockEntry, LockedFile]] = []
    for e in entries:
        files = e.files if wanted is None else wanted.get(e.uri, [])
        todo += [(e, f) for f in files]
    if not todo:
        return 0
    missing = [(e, f) for e, f in todo if not cache.has(f.sha256, f.size)]
    moved = 0
    if missing:
        size = sum(f.size for _e, f in missing)
        if log:
            log(f"sources: fetching {len(missing)} file(s), {size:,} bytes, into {cache.root}")
        readers = {e.uri: reader(parse(e.uri).scheme) for e, _f in missing}
        with ThreadPoolExecutor(jobs(), thread_name_prefix="kiln-src") as pool:
            moved = sum(pool.map(lambda ef: fetch_file(cache, readers[ef[0].uri], ef[0].uri, ef[1]),
                                 missing))
        if log:  # less than asked when another process fetched some of them meanwhile
            log(f"sources: {moved:,} bytes moved over the network")
        cache.evict({f.sha256 for _e, f in todo})
    for e, f in todo:
        cache.touch(f.sha256)
        cache.link(e, f)
    return moved


def ingester(cache: FetchCache) -> Callable[[str, int, str, Stream], LockedFile]:
    """An `Ingest` for resolvers: stream a file whose sha256 is unknown through a hash into the
    cache, so locking a store that gives no digests fetches each byte once, not twice."""
    def ingest(path: str, size: int, ref: str, stream: Stream) -> LockedFile:
        tmp = cache.root / "partial" / f"ingest-{uuid.uuid4().hex}"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        got = 0
        try:
            with open(tmp, "wb") as out:
                reserve(out.fileno(), 0, size)

                def write(data: bytes | memoryview) -> None:
                    nonlocal got
                    h.update(data)
                    out.write(data)
                    got += len(data)
                stream(0, write)
            if got != size:
                raise OSError(f"{path}: {got} bytes read, the store said {size}")
            sha = h.hexdigest()
            if cache.has(sha, size):
                tmp.unlink()
            else:
                cache.commit(tmp, sha)
        finally:
            tmp.unlink(missing_ok=True)
        return LockedFile(path, size, sha, ref)
    return ingest


__all__ = ["Write", "ensure", "fetch_file", "ingester", "jobs"]
