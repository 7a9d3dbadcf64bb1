"""A content-addressed cache of validated documents, so a no-op build does not re-parse specs.

Parsing YAML and validating it costs a few milliseconds per file plus ~100 ms of imports (yaml,
jsonschema); a no-op `doit build` over 100 specs has under a second in total. A valid document's data
and marks are stored as JSON (never pickle: the cache directory must not be a code-execution path)
under a key made of the file's sha256, the schema's sha256, the schema name and `LOADER_VERSION`, so
an edit to any of them is a miss, never a stale hit. The file's sha256 comes from the shared
`StatCache`, so an untouched spec is not even read. Losing the cache costs time, never correctness;
so does an entry that is corrupt, of another shape or not a regular file (`statefile`): a miss.
An entry carries the sha256 of its own content (`sum`), so one edited or damaged on disk is a
miss too, never a document that skipped validation.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from modelkiln.artifacts.digest import StatCache, canonical_json, sha256_bytes
from modelkiln.artifacts.statefile import load_json
from modelkiln.spec.document import KeyPath, Mark, SpecDocument
from modelkiln.spec.schemas import schema_digest

# Bump whenever parsing or validation changes what a document holds or which files pass.
LOADER_VERSION = 1


class DocumentCache:
    """`<cache_dir>/specs/<key>.json` entries plus the stat cache that names file contents."""

    def __init__(self, cache_dir: Path | None, stat_cache: StatCache | None = None):
        if cache_dir is None:
            if stat_cache is None or stat_cache.path is None:
                raise ValueError("DocumentCache needs a cache_dir, or a stat_cache that has a path")
            cache_dir = stat_cache.path.parent
        self._own_stats = stat_cache is None
        self.stats = stat_cache if stat_cache is not None else StatCache(Path(cache_dir) / "hashcache.json")
        self.dir = Path(cache_dir) / "specs"
        self.hits = 0

    def key(self, content_sha256: str, schema: str) -> str:
        """Cache key for a file's content validated against a schema by this loader version."""
        text = f"modelkiln-spec\0{LOADER_VERSION}\0{schema}\0{schema_digest(schema)}\0{content_sha256}"
        return sha256_bytes(text.encode())

    def lookup(self, path: Path, schema: str) -> SpecDocument | None:
        """The cached document for `path` as it is on disk now, or None."""
        try:
            entry = load_json(self.dir / f"{self.key(self.stats.digest(path), schema)}.json")
            if not (isinstance(entry, dict) and entry.get("loader") == LOADER_VERSION
                    and isinstance(entry.get("data"), dict) and entry.get("sum") == _sum(entry)):
                return None
            doc = SpecDocument(path, entry["data"], _marks(entry["marks"]), _marks(entry["key_marks"]))
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            return None  # absent, unreadable or from an incompatible writer: parse afresh
        self.hits += 1
        return doc

    def store(self, raw: bytes, doc: SpecDocument, schema: str) -> None:
        """Remember a valid document, keyed by the bytes it was parsed from (not a later re-stat)."""
        entry: dict[str, Any] = {"loader": LOADER_VERSION, "data": doc.data,
                                 "marks": _pack(doc.marks), "key_marks": _pack(doc.key_marks)}
        entry["sum"] = _sum(entry)
        target = self.dir / f"{self.key(sha256_bytes(raw), schema)}.json"
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(entry, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
            os.replace(tmp, target)
        except OSError:
            with contextlib.suppress(OSError):  # its directory may be a file: nothing to undo
                tmp.unlink(missing_ok=True)  # a read-only or full cache dir only costs speed

    def save(self) -> None:
        """Persist the stat cache if this object created it (a caller's own one is theirs to save)."""
        if self._own_stats:
            try:
                self.stats.save()
            except OSError:
                pass


def _sum(entry: dict[str, Any]) -> str:
    """sha256 of what an entry holds (its document, marks and loader version)."""
    return sha256_bytes(canonical_json([entry.get("loader"), entry.get("data"),
                                        entry.get("marks"), entry.get("key_marks")]))


def _pack(marks: Any) -> list[list[Any]]:
    return [[list(path), line, col] for path, (line, col) in marks.items()]


def _marks(rows: list[list[Any]]) -> dict[KeyPath, Mark]:
    """Marks as `_pack` wrote them; TypeError or ValueError for anything else."""
    marks: dict[KeyPath, Mark] = {}
    for path, line, col in rows:
        if not (isinstance(path, list) and type(line) is int and type(col) is int):
            raise TypeError("not a mark")
        marks[tuple(path)] = (line, col)
    return marks
