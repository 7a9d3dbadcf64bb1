"""Converted bundles kept between runs, so a no-op does not re-check every spec's input files.

`to_bundle` reads the label files, config.json and the safetensors headers and resolves every
path a spec names. Its result is kept in `<state>/bundles/<digest of the spec path>.json` with
what it was made from:
- the spec file's sha256 (through the shared `StatCache`: an untouched spec is not even read),
- `salt`: the caller's name for how the spec text became data (schema and loader versions),
- the digest of this package's own source (an edited check is a miss, not a stale pass),
- the project root the conversion found,
- the fetch cache's root (a remote source's path is a tree in it: a converted bundle must not
  keep pointing into a cache that moved or that this process no longer uses), and
- every filesystem observation the checks made (`model.observe`): each path's realpath, and each
  file's stat signature (mode, device, inode, size, mtime_ns, ctime_ns).
A lookup is a hit only when all of them come out the same now; anything else is a miss and the
spec is converted afresh. Only a conversion without problems is kept, and only when no file it
saw was modified in the last 100 ms (a write within one timestamp tick could repeat the stat).
Entries are JSON, never pickle, and losing one costs time, never correctness; so does one that
is corrupt, of another shape or not a regular file (`statefile`): a miss.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import stat
import time
from pathlib import Path

from .. import __version__
from ..artifacts.digest import RACY_NS, StatCache, sha256_bytes
from ..artifacts.statefile import load_json
from ..paths import project_root
from ..sources.cache import root_dir as fetch_root
from .bundle import Bundle
from .checker import Document
from .codec import decode_bundle, encode
from .convert import to_bundle
from .observe import Observations, Recheck, recording

FORMAT = 1
# what a conversion's result depends on (backends: which sections enable which backend, NEEDS)
_CODE_FILES = ("model", "backends", "artifacts/names.py", "paths.py")


@functools.cache
def code_digest() -> str:
    """sha256 over the source of the conversion code (this package, the file-name constants and
    project-root rules), so a changed check never reuses a result of the old one."""
    base = Path(__file__).resolve().parents[1]
    files: list[Path] = []
    for part in _CODE_FILES:
        path = base / part
        files.extend(sorted(path.glob("*.py")) if path.is_dir() else [path])
    blob = b"".join(f.name.encode() + b"\0" + f.read_bytes() + b"\0" for f in files)
    return sha256_bytes(blob + __version__.encode())


class BundleCache:
    """One JSON entry per spec path under `<state_dir>/bundles/` (see the module doc)."""

    def __init__(self, state_dir: Path, stats: StatCache, salt: str):
        self.dir = state_dir / "bundles"
        self.stats, self.salt = stats, salt
        self.sources = str(fetch_root())
        self.recheck = Recheck()  # one per load: files may change between two loads
        self._roots: dict[str, Path] = {}
        self.hits = 0

    def _entry_path(self, spec: str) -> Path:
        return self.dir / f"{sha256_bytes(spec.encode())[:40]}.json"

    def spec_digest(self, spec: str) -> str | None:
        """The spec's sha256, or None when it is not a regular file (never read a FIFO)."""
        try:
            if not stat.S_ISREG(os.stat(spec).st_mode):
                return None
            return self.stats.digest(spec)
        except (OSError, ValueError):
            return None

    def _root(self, spec: str) -> Path:
        parent = os.path.dirname(spec)
        if parent not in self._roots:
            self._roots[parent] = project_root(Path(spec))
        return self._roots[parent]

    def lookup(self, path: Path) -> Bundle | None:
        """The bundle converted from `path` before, if nothing it was made from has changed."""
        spec = os.path.abspath(path)
        try:
            entry = load_json(self._entry_path(spec))
            if not (isinstance(entry, dict) and entry.get("format") == FORMAT
                    and entry.get("spec") == spec and entry.get("salt") == self.salt
                    and entry.get("code") == code_digest()
                    and entry.get("sources") == self.sources):
                return None
            seen = Observations(dict(entry["resolved"]), dict(entry["stats"]))
            if entry.get("sha256") != self.spec_digest(spec) or not self.recheck.holds(seen):
                return None
            bundle = decode_bundle(entry["bundle"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return None  # absent, unreadable, or written by an incompatible version: convert
        if bundle.root != self._root(spec):
            return None
        self.hits += 1
        return bundle

    def store(self, path: Path, raw_digest: str, bundle: Bundle, seen: Observations) -> None:
        """Keep a conversion made from the spec bytes of sha256 `raw_digest` and `seen`."""
        spec = os.path.abspath(path)
        if seen.changed or not _settled(seen) or self.spec_digest(spec) != raw_digest:
            return  # something moved while it was checked: next time converts again
        entry = {"format": FORMAT, "spec": spec, "salt": self.salt, "code": code_digest(),
                 "sources": self.sources, "sha256": raw_digest, "resolved": seen.resolved, "stats": seen.stats,
                 "bundle": encode(bundle)}
        target = self._entry_path(spec)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(entry, separators=(",", ":")), encoding="utf-8")
            os.replace(tmp, target)
        except OSError:
            with contextlib.suppress(OSError):  # its directory may be a file: nothing to undo
                tmp.unlink(missing_ok=True)  # a read-only or full state dir only costs speed


def _settled(seen: Observations) -> bool:
    """Every file the checks saw still has the signature they saw, none from the last 100 ms."""
    now, again = time.time_ns(), Recheck()
    for path, sig in seen.stats.items():
        if again.stat(path) != sig:
            return False
        if sig is not None and now - max(sig[4], sig[5]) <= RACY_NS:
            return False
    return all(again.realpath(p) == real for p, real in seen.resolved.items())



def convert(doc: Document, cache: BundleCache | None = None, raw_digest: str | None = None) -> Bundle:
    """`to_bundle(doc)`, kept in `cache` (when given, with the sha256 of the bytes `doc` was
    parsed from, taken before they were read) for later runs; raises SpecError as it does."""
    with recording() as seen:
        bundle = to_bundle(doc)
    if cache is not None and raw_digest is not None:
        cache.store(doc.path, raw_digest, bundle, seen)
    return bundle
