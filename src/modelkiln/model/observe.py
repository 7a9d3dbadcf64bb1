"""What the cross-field checks saw of the filesystem, so a result is reused only while all of it holds.

Converting a spec into a `Bundle` reads label files, config.json and safetensors headers, and
resolves and stats every path the spec names: about a millisecond per bundle, which a no-op over a
thousand bundles cannot afford on every run. `model.cache` keeps converted bundles; this module
records, while one conversion runs, every observation it made:

- `resolved`: each path as written (absolute, unresolved) -> what `realpath` made of it;
- `stats`: each path stat'ed or opened -> its signature (mode, device, inode, size, mtime_ns,
  ctime_ns), or None when it was absent or unreadable.

The conversion is a function of the spec's data and of these observations alone, so when every
observation comes out the same again, so does the conversion. ctime is in the signature because
no tool can set it: a file rewritten in place with its old size and mtime restored still differs.
`checker.kind_of` and `files.open_regular` report here; outside `recording()` they pay one
context-variable read.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

Signature = list[int]  # JSON-friendly: it is compared with what the cache file holds


def signature(st: os.stat_result) -> Signature:
    return [st.st_mode, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


@dataclass
class Observations:
    resolved: dict[str, str] = field(default_factory=dict)
    stats: dict[str, Signature | None] = field(default_factory=dict)
    changed: bool = False  # one path gave two different answers: the result must not be kept


_CURRENT: ContextVar[Observations | None] = ContextVar("modelkiln_observations", default=None)


@contextmanager
def recording() -> Iterator[Observations]:
    """Collect what the checks run inside this block see."""
    seen = Observations()
    token = _CURRENT.set(seen)
    try:
        yield seen
    finally:
        _CURRENT.reset(token)


def saw_stat(path: os.PathLike[str] | str, st: os.stat_result | None) -> None:
    """A stat (or fstat of an opened file) of `path`; None when it failed."""
    seen = _CURRENT.get()
    if seen is None:
        return
    key = os.path.abspath(path)
    sig = None if st is None else signature(st)
    if seen.stats.setdefault(key, sig) != sig:
        seen.changed = True


def saw_resolve(path: os.PathLike[str] | str, result: os.PathLike[str] | str) -> None:
    """`path` resolved to `result` (symlinks followed)."""
    seen = _CURRENT.get()
    if seen is None:
        return
    key, value = os.path.abspath(path), os.fspath(result)
    if seen.resolved.setdefault(key, value) != value:
        seen.changed = True


class Recheck:
    """Observations made again, each path once per instance: one load of many bundles that share
    a checkpoint stats it once. Make a new instance per load, since files change between loads."""

    def __init__(self) -> None:
        self._stats: dict[str, Signature | None] = {}
        self._real: dict[str, str] = {}

    def stat(self, path: str) -> Signature | None:
        if path not in self._stats:
            try:
                self._stats[path] = signature(os.stat(path))
            except (OSError, ValueError):
                self._stats[path] = None
        return self._stats[path]

    def realpath(self, path: str) -> str | None:
        if path not in self._real:
            try:
                self._real[path] = os.path.realpath(path)
            except (OSError, ValueError):
                return None
        return self._real[path]

    def holds(self, seen: Observations) -> bool:
        """Whether every observation in `seen` comes out the same now."""
        return (all(self.realpath(p) == real for p, real in seen.resolved.items())
                and all(self.stat(p) == sig for p, sig in seen.stats.items()))
