"""A remote source in a spec (`s3://`, `oci://`, `hf://`) read through the lock beside it.

Validation never touches the network: the URI must have an entry in `bundles/<name>.lock`, and
the path the bundle gets is that entry's tree directory in the fetch cache (or its one file, for a
calibration file), where a stage finds the bytes once they are fetched. A URI without an entry is a
problem whose fix is `kiln lock NAME`. The lock file's stat is observed, so a converted bundle kept
in the cache is converted again when the lock changes.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..sources.cache import FetchCache
from ..sources.lockfile import BadLock, LockEntry, lock_path, read
from ..sources.uris import BadSourceUri, parse

if TYPE_CHECKING:
    from .checker import Checker, KeyPath


def remote_path(c: Checker, key: KeyPath, value: str, kind: str) -> Path | None:
    """The local place of a locked remote source, or None (a problem recorded)."""
    from .checker import kind_of

    try:
        parse(value)
    except BadSourceUri as exc:
        c.fail(key, f"'{value}': {exc.why}", exc.fix)
        return None
    lock = lock_path(c.spec)
    kind_of(lock)  # observed: a changed lock converts the spec again
    name = c.doc.data.get("name", lock.stem)
    try:
        entries = read(lock) or {}
    except BadLock as exc:
        c.fail(key, str(exc), f"run `kiln lock {name}`")
        return None
    entry = entries.get(value)
    if entry is None:
        c.fail(key, f"remote source '{value}' has no entry in {lock.name}", f"run `kiln lock {name}` "
               "to resolve it and record every file's digest; commit the lock with the spec")
        return None
    return _place(c, key, entry, kind)


def _place(c: Checker, key: KeyPath, entry: LockEntry, kind: str) -> Path | None:
    tree = FetchCache().tree_dir(entry)
    if kind == "dir":
        return tree
    if len(entry.files) != 1:
        c.fail(key, f"'{entry.uri}' is {len(entry.files)} files, not one file",
               "name one object (s3://bucket/key, no trailing '/')")
        return None
    return tree / entry.files[0].path
