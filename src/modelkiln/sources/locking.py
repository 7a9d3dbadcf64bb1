"""`kiln lock`: resolve a spec's remote sources and write the lock beside it.

Each remote URI the spec names (checkpoint, tokenizer, calibration files) is resolved by its
scheme's reader. A file whose store identity (ETag, version id, blob digest) and size are those
already locked keeps its locked sha256 without being read again, so re-locking an unchanged S3
prefix reads metadata only. Small files (config, tokenizer, labels: at most 1 MiB) are fetched into
the cache and placed in the source's tree, so validation can check the checkpoint's config.json
without any network afterwards.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cache import FetchCache
from .fetch import ensure, ingester
from .lockfile import LockedFile, LockEntry, lock_path, read, write
from .scheme import Stream, reader
from .uris import is_remote, parse

# where a spec may name a remote source
KEYS = (("source", "checkpoint"), ("source", "tokenizer"), ("thresholds", "calibration"),
        ("backends", "onnx", "quantize", "calibration"))
SMALL = 1 << 20


@dataclass(frozen=True)
class Locked:
    """What `lock_spec` did: the lock file, its entries, whether its bytes changed."""

    path: Path
    entries: tuple[LockEntry, ...]
    changed: bool


def remote_uris(data: Mapping[str, Any]) -> list[str]:
    """The remote source URIs a spec's data names, in KEYS order, each once."""
    out: list[str] = []
    for key in KEYS:
        value: Any = data
        for part in key:
            value = value.get(part) if isinstance(value, Mapping) else None
        if isinstance(value, str) and is_remote(value) and value not in out:
            out.append(value)
    return out


def lock_spec(spec: Path, data: Mapping[str, Any], log: Callable[[str], None] | None = None,
              cache: FetchCache | None = None) -> Locked:
    cache = cache or FetchCache()
    path = lock_path(spec)
    old = read(path) or {}
    entries = []
    for uri in remote_uris(data):
        src = parse(uri)
        if log:
            log(f"lock: resolving {uri}")
        entry = reader(src.scheme).resolve(src, _reusing(cache, old.get(uri)))
        ensure([entry], {uri: [f for f in entry.files if f.size <= SMALL]}, log, cache)
        for f in entry.files:
            if cache.has(f.sha256, f.size):
                cache.link(entry, f)
        entries.append(entry)
    changed = write(path, entries) if entries or path.exists() else False
    return Locked(path, tuple(entries), changed)


def _reusing(cache: FetchCache, previous: LockEntry | None) -> Callable[[str, int, str, Stream], LockedFile]:
    ingest = ingester(cache)

    def reuse(rel: str, size: int, ref: str, stream: Stream) -> LockedFile:
        known = previous.file(rel) if previous is not None else None
        if known is not None and known.size == size and known.ref == ref and ref:
            return known
        return ingest(rel, size, ref, stream)
    return reuse
