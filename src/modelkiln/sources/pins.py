"""Remote source files as plan inputs: their fixed local paths and their locked digests.

A remote source's files have a fixed place in the fetch cache (its tree directory), known from the
lock alone. Registering a bundle's lock entries lets the up-to-date check and the cache key take a
tree file's digest from the lock (no fetch, no read: the bytes placed there are verified against the
same digest), and lets a stage's plan list a tree directory that has not been fetched yet.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .cache import FetchCache
from .lockfile import LockedFile, LockEntry

_FILES: dict[str, tuple[LockEntry, LockedFile]] = {}
_DIRS: dict[str, set[str]] = {}


def register(entries: Iterable[LockEntry], cache: FetchCache | None = None) -> None:
    """Make `entries`' tree files known to `digest`, `listing` and `find` in this process. A file
    registered before (a tree shared by two sources, or an edited lock read again) now answers
    with the entry given here: the latest lock read wins."""
    cache = cache or FetchCache()
    for entry in entries:
        root = cache.tree_dir(entry)
        _DIRS.setdefault(str(root), set())
        for f in entry.files:
            path = root / f.path
            _FILES[str(path)] = (entry, f)
            _DIRS.setdefault(str(path.parent), set()).add(path.name)


def find(path: str | os.PathLike[str]) -> tuple[LockEntry, LockedFile] | None:
    return _FILES.get(os.fspath(path)) if _FILES else None


def digest(path: str | os.PathLike[str]) -> str | None:
    """The locked sha256 of a registered tree file, else None (a local file: hash it)."""
    hit = find(path)
    return hit[1].sha256 if hit else None


def listing(directory: str | os.PathLike[str]) -> set[str] | None:
    """Names of the files directly in a registered tree directory, else None."""
    names = _DIRS.get(os.fspath(directory)) if _DIRS else None
    return set(names) if names is not None else None


def entries_of(paths: Iterable[Path]) -> dict[str, list[LockedFile]]:
    """uri -> the locked files among `paths` (those that are registered tree files)."""
    out: dict[str, list[LockedFile]] = {}
    for p in paths:
        hit = find(p)
        if hit:
            out.setdefault(hit[0].uri, []).append(hit[1])
    return out


def register_lock(spec: Path) -> None:
    """Register the entries of the lock beside `spec`, when there is one. The lock is read again
    only when its stat signature (inode, size, mtime_ns, ctime_ns) or the fetch cache's root
    changed, so a long-running process (kiln ui) sees an edited lock and a plan of many bundles
    reads each lock once. A lock that cannot be read registers nothing here: validation reports it."""
    from .cache import root_dir
    from .lockfile import BadLock, lock_path, read

    path = lock_path(spec)
    try:
        st = os.stat(path)
        seen: tuple[object, ...] = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                                    str(root_dir()))
    except OSError:
        seen = ("absent",)
    key = os.fspath(path)
    if _LOCKS.get(key) == seen:
        return
    _LOCKS[key] = seen
    try:
        found = read(path)
    except BadLock:
        return
    if found:
        register(found.values())


_LOCKS: dict[str, tuple[object, ...]] = {}
