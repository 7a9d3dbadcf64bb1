"""The TensorRT engine index: which engines of one family the cache holds, one entry per platform.

    engines/<family sha256>/<platform class>.json

A TensorRT engine is built on a runner with the matching GPU, and its `trt:` action record is
keyed by that runner's platform class (`sm80-trt10.3.0-cuda12`): a packaging run on another
machine cannot compute that key, so it could never find the record. Trusted runs therefore also
write this small entry, naming the engine's blobs (the engine, its `engine.json` and its parity
logits) and the record they come from. The family is the engine key without its host part (same
ONNX model, profiles and builder settings), so listing one family's directory finds exactly the
engines one bundle may hold side by side.

Like an action record, an entry is written conditionally (first writer wins) and only after the
record it points to, so an entry never names a missing blob; it is immutable, so its sha256
names it in a packaging task's parameters. A reader refuses a malformed entry (a warning, never a
failed build) and fetches the blobs with the same size and sha256 checks as every cache read.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifacts.digest import canonical_json, sha256_bytes
from .actions import ActionCache
from .records import ActionRecord, BadRecord, BlobRef, parse_json, safe_relpath

SCHEMA = 1
PREFIX = "engines"
ENTRY_LIMIT = 1 << 20
_HEX = re.compile(r"^[0-9a-f]{64}$")
_PLATFORM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_SM = re.compile(r"^sm[0-9]{2,4}$")


@dataclass(frozen=True)
class EngineEntry:
    """One engine of a family in the cache: the blobs of its `engines/<sm>/` and `parity/<sm>/`
    files, and the `trt:` record (task and key) they were saved under."""

    family: str
    platform: str
    sm: str
    key_sha256: str  # the engine key's digest (engine.json's key_sha256)
    task: str
    record: str
    files: tuple[BlobRef, ...]

    def to_bytes(self) -> bytes:
        return canonical_json({
            "schema": SCHEMA, "family_sha256": self.family, "platform": self.platform,
            "sm": self.sm, "key_sha256": self.key_sha256, "task": self.task,
            "record": self.record,
            "files": [{"path": b.path, "size": b.size, "sha256": b.sha256}
                      for b in sorted(self.files, key=lambda b: b.path)]})

    @classmethod
    def from_bytes(cls, data: bytes, family: str, platform: str) -> EngineEntry:
        """Parse an entry read from `engines/<family>/<platform>.json`; BadRecord says why not."""
        raw = parse_json(data)  # BadRecord for text that does not parse or nests too deep
        if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
            raise BadRecord(f"not a schema-{SCHEMA} engine index entry")
        if raw.get("family_sha256") != family or raw.get("platform") != platform:
            raise BadRecord("its family or platform differs from where it is filed")
        entry = cls(family=family, platform=platform, sm=_text(raw, "sm"),
                    key_sha256=_text(raw, "key_sha256"), task=_text(raw, "task"),
                    record=_text(raw, "record"),
                    files=tuple(_file(f) for f in _items(raw.get("files"))))
        problem = entry.problem()
        if problem:
            raise BadRecord(problem)
        return entry

    def problem(self) -> str | None:
        """What makes this entry unusable, or None."""
        if not (_HEX.match(self.family) and _HEX.match(self.key_sha256)
                and _HEX.match(self.record)):
            return "a digest is not 64 hex digits"
        if not _PLATFORM.match(self.platform) or not _SM.match(self.sm):
            return f"platform {self.platform!r} or architecture {self.sm!r} is not a plain name"
        paths = {b.path for b in self.files}
        if len(paths) != len(self.files):
            return "a file appears twice"
        mine = (f"engines/{self.sm}/", f"parity/{self.sm}/")
        if not all(safe_relpath(p) and p.startswith(mine) for p in paths):
            return f"a file lies outside engines/{self.sm}/ and parity/{self.sm}/"
        if not {f"engines/{self.sm}/model.plan", f"engines/{self.sm}/engine.json"} <= paths:
            return f"it names no engines/{self.sm}/model.plan and engine.json"
        return None


def _text(raw: dict[str, Any], name: str) -> str:
    value = raw.get(name)
    if not isinstance(value, str):
        raise BadRecord(f"{name} is not a string")
    return value


def _items(value: object) -> list[Any]:
    if not isinstance(value, list):
        raise BadRecord("files is not a list")
    return value


def _file(value: object) -> BlobRef:
    if not isinstance(value, dict):
        raise BadRecord("a file is not an object")
    path, size, digest = value.get("path"), value.get("size"), value.get("sha256")
    if not isinstance(path, str) or not isinstance(digest, str) or not _HEX.match(digest) \
            or not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadRecord(f"file {path!r}: not a path, byte count and sha256")
    return BlobRef(path, size, digest)


def entry_key(family: str, platform: str) -> str:
    return f"{PREFIX}/{family}/{platform}.json"


def from_record(record: ActionRecord) -> EngineEntry | None:
    """The index entry of a `trt:` record, or None when it does not hold exactly one engine
    built on a known platform (an older stage version, a host without a GPU)."""
    engines = record.report.get("engines")
    platform = record.material.get("platform")
    if not isinstance(engines, dict) or len(engines) != 1 or not isinstance(platform, str):
        return None
    sm, about = next(iter(engines.items()))
    if not isinstance(about, dict):
        return None
    family, key = about.get("family_sha256"), about.get("key_sha256")
    if not isinstance(family, str) or not isinstance(key, str):
        return None
    mine = (f"engines/{sm}/", f"parity/{sm}/")
    entry = EngineEntry(family=family, platform=platform, sm=sm, key_sha256=key,
                        task=record.task, record=record.key,
                        files=tuple(b for b in record.outputs if b.path.startswith(mine)))
    return None if entry.problem() else entry


def put_entry(cache: ActionCache, entry: EngineEntry) -> bool:
    """Write `entry` unless one for its family and platform is there (first writer wins).
    True when this call wrote it; False when it was there, or the cache is read-only or broken."""
    if not cache.write or cache.broken:
        return False
    try:
        return cache.put_if_absent(entry_key(entry.family, entry.platform), entry.to_bytes())
    except Exception as exc:  # a failed cache write never fails the build
        cache._io_failed("writing the engine index", exc)
        return False


def list_entries(cache: ActionCache, family: str) -> list[tuple[EngineEntry, str]]:
    """Every usable entry of `family`, sorted by platform, each with the sha256 of its bytes.
    A malformed entry is left out with a warning; an unreachable cache gives an empty list."""
    if cache.broken or not _HEX.match(family):
        return []
    prefix = f"{PREFIX}/{family}/"
    try:
        keys = cache.place.list_keys(prefix)
    except Exception as exc:
        cache._io_failed("listing the engine index", exc)
        return []
    found = []
    for key in keys:
        name = key[len(prefix):]
        if "/" in name or not name.endswith(".json"):
            continue
        data = cache.read_small(key, ENTRY_LIMIT)
        if data is None:
            continue
        try:
            found.append((EngineEntry.from_bytes(data, family, name[:-len(".json")]),
                          sha256_bytes(data)))
        except BadRecord as exc:
            cache.log(f"kiln: warning: cache {cache.uri}: engine index entry {key} is unusable "
                      f"({exc}); leaving it out")
    return found


def read_entry(cache: ActionCache, family: str, platform: str, sha256: str) -> EngineEntry | None:
    """The entry of `family` and `platform` whose bytes have `sha256`, or None."""
    data = cache.read_small(entry_key(family, platform), ENTRY_LIMIT)
    if data is None or sha256_bytes(data) != sha256:
        return None
    try:
        return EngineEntry.from_bytes(data, family, platform)
    except BadRecord:
        return None


def fetch_entry(cache: ActionCache, entry: EngineEntry, dest: Path) -> str | None:
    """Fetch every file of `entry` into the empty directory `dest`, each checked against its
    size and sha256. None when all arrived intact, else why not (the caller leaves it out)."""
    if cache.broken:
        return "the cache is unreachable"
    for blob in entry.files:
        target = dest / blob.path
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # its paths do not fit one directory (`x` beside `x/y`)
            return f"its file {blob.path} cannot be placed ({exc.strerror})"
        why = cache.fetch_blob(blob, target)
        if why is not None:  # a transport failure also turns the cache off for this run
            return f"its blob for {blob.path} is {why}"
    return None
