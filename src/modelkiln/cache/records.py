"""The action record: what one task produced for one cache key. One writer, one reader (here).

A record names its outputs by relative path, size and sha256 (the blobs that hold their bytes are
content-addressed under `blobs/sha256/<hex>`), the task's report (what its stamp keeps), the input
digests it was built from, and the key material. The reader refuses anything malformed, so a
hostile or torn record is a miss, never a write elsewhere and never a crash:

- output names are relative POSIX paths that stay inside the output directory: no `..`, no
  absolute path, no control character, no segment over 255 bytes, and no name that is a parent
  directory of another (`x` beside `x/y`); the output list is digested as canonical JSON
  (`outputs_digest`), so no two lists share a digest;
- nesting deeper than `MAX_DEPTH` (a report of a million brackets) is refused, not a
  RecursionError;
- `check` binds a record to the task it is restored for (`Expected`): the task and stage it was
  written for, the key its material digests to (a record copied under another key is refused),
  and the outputs the stage declares (an extra, missing or misplaced file is refused).

Schema 2 (outputs_digest, the checks above) replaced schema 1; the key version changed with it, so
an old record is never looked up (and one planted under a new key is refused).
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..artifacts.digest import aggregate, canonical_json, sha256_bytes
from ..artifacts.fileref import FileRef

SCHEMA = 2
MAX_DEPTH = 64  # arrays/objects inside one another: reports hold a few levels
MAX_OUTPUTS = 100_000
NAME_BYTES, PATH_BYTES = 255, 4096  # the usual NAME_MAX and PATH_MAX
_HEX = re.compile(r"^[0-9a-f]{64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class BadRecord(ValueError):
    """A record that does not parse or does not describe a usable output set."""


BlobRef = FileRef  # one output file: where it goes (relative, POSIX) and the bytes it must have


@dataclass(frozen=True)
class Expected:
    """What the reader knows a record must say before it is restored for a task: the task and
    stage it is for, `key_of` (the function that digests key material into a key) and `outputs`
    (the stage's declaration: None when the record's outputs are what the stage writes, else
    what is wrong). The graph fills it in; this package only compares."""

    task: str
    stage: str
    key_of: Callable[[Mapping[str, Any]], str] | None = None
    outputs: Callable[[ActionRecord], str | None] | None = None


@dataclass(frozen=True)
class ActionRecord:
    key: str
    task: str
    stage: str
    outputs: tuple[BlobRef, ...]
    report: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)  # input file digests (no upstream marks)
    material: dict[str, Any] = field(default_factory=dict)  # everything the key was computed from

    @property
    def outputs_aggregate(self) -> str:
        """The stamps' aggregate (what a downstream key reads of this task), not a self-check."""
        return aggregate((b.path, b.sha256) for b in self.outputs)

    @property
    def outputs_digest(self) -> str:
        """The record's own digest of its output list: canonical JSON, unambiguous."""
        return outputs_digest(self.outputs)

    @property
    def size(self) -> int:
        return sum(b.size for b in self.outputs)

    def digests(self) -> dict[str, str]:
        return {b.path: b.sha256 for b in self.outputs}

    def to_bytes(self) -> bytes:
        return canonical_json({
            "schema": SCHEMA, "key": self.key, "task": self.task, "stage": self.stage,
            "outputs": [{"path": b.path, "size": b.size, "sha256": b.sha256}
                        for b in sorted(self.outputs, key=lambda b: b.path)],
            "outputs_digest": self.outputs_digest, "report": self.report,
            "inputs": self.inputs, "material": self.material,
        })

    @classmethod
    def from_bytes(cls, data: bytes, key: str) -> ActionRecord:
        """Parse and check a record read for `key`; BadRecord says what is wrong."""
        raw = parse_json(data)
        if not isinstance(raw, dict):
            raise BadRecord("not an action record")
        if raw.get("schema") != SCHEMA:
            raise BadRecord(f"not a schema-{SCHEMA} action record")
        if raw.get("key") != key:
            raise BadRecord(f"written for key {str(raw.get('key'))[:12]}, read as {key[:12]}")
        listed = _list(raw.get("outputs"))
        if len(listed) > MAX_OUTPUTS:
            raise BadRecord(f"{len(listed)} outputs (at most {MAX_OUTPUTS})")
        outputs = tuple(_blob(o) for o in listed)
        problem = layout_problem(b.path for b in outputs)
        if problem:
            raise BadRecord(problem)
        record = cls(key=key, task=_str(raw.get("task")), stage=_str(raw.get("stage")),
                     outputs=outputs, report=_dict(raw.get("report")),
                     inputs={k: _str(v) for k, v in _dict(raw.get("inputs")).items()},
                     material=_dict(raw.get("material")))
        if raw.get("outputs_digest") != record.outputs_digest:
            raise BadRecord("outputs_digest does not match its outputs")
        return record

    def check(self, expected: Expected) -> None:
        """BadRecord unless this record is one the expected task's run could have written."""
        if (self.task, self.stage) != (expected.task, expected.stage):
            raise BadRecord(f"written for {shown(self.task)} (stage {shown(self.stage)}), read "
                            f"for {expected.task} (stage {expected.stage})")
        if expected.key_of is not None:
            try:
                bound = expected.key_of(self.material)
            except (TypeError, ValueError, RecursionError):
                bound = ""
            if bound != self.key:
                raise BadRecord("its key material does not digest to its key (a record copied "
                                "under another key)")
            if self.material.get("task") != self.task or self.material.get("stage") != self.stage:
                raise BadRecord("its key material names another task")
            if self.material.get("inputs") != self.inputs:
                raise BadRecord("its input digests differ from its key material")
        problem = expected.outputs(self) if expected.outputs is not None else None
        if problem:
            raise BadRecord(f"outputs are not what {self.stage} writes: {problem}")


def outputs_digest(outputs: Iterable[BlobRef]) -> str:
    return sha256_bytes(canonical_json(sorted([b.path, b.size, b.sha256] for b in outputs)))


def parse_json(data: bytes) -> Any:
    """JSON from the cache: BadRecord for text that does not parse or nests deeper than
    MAX_DEPTH (the parser's own recursion is caught, and shallower depth is checked without
    recursing, so no later walk of the value can overflow either)."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise BadRecord(f"not JSON ({str(exc)[:80]})") from None
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > MAX_DEPTH:
            raise BadRecord(f"nested deeper than {MAX_DEPTH} levels")
        stack.extend((c, depth + 1) for c in children)
    return value


def shown(text: str, limit: int = 60) -> str:
    """An untrusted string as a warning shows it: quoted, escaped and clipped."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise BadRecord(f"expected a string, got {type(value).__name__}")
    return value


def _dict(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRecord(f"expected an object, got {type(value).__name__}")
    return value


def _list(value: object) -> list[Any]:
    if not isinstance(value, list):
        raise BadRecord(f"expected a list, got {type(value).__name__}")
    return value


def safe_relpath(path: str) -> bool:
    """A relative POSIX path that stays inside its directory and that every file system here
    can hold: no '..', '.', empty or over-long segment, not absolute, no backslash, no control
    character, valid UTF-8 (no lone surrogate)."""
    if not path or path.startswith("/") or "\\" in path or _CONTROL.search(path):
        return False
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return len(encoded) <= PATH_BYTES and all(
        p not in ("", ".", "..") and len(p.encode()) <= NAME_BYTES for p in path.split("/"))


def layout_problem(paths: Iterable[str]) -> str | None:
    """Why these output paths cannot all be files of one directory, or None: a path listed
    twice, or one that is a parent directory of another (`x` and `x/y`)."""
    seen: set[str] = set()
    for path in paths:
        if path in seen:
            return f"output path {shown(path)} appears twice"
        seen.add(path)
    for path in seen:
        parts = path.split("/")
        for n in range(1, len(parts)):
            if "/".join(parts[:n]) in seen:
                return f"output {shown('/'.join(parts[:n]))} is also the directory of {shown(path)}"
    return None


def _blob(value: object) -> BlobRef:
    raw = _dict(value)
    path, size, digest = raw.get("path"), raw.get("size"), raw.get("sha256")
    if not isinstance(path, str) or not safe_relpath(path):
        what = shown(path) if isinstance(path, str) else type(path).__name__
        raise BadRecord(f"output path {what} is not a safe relative path")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadRecord(f"output {shown(path)}: size is not a byte count")
    if not isinstance(digest, str) or not _HEX.match(digest):
        raise BadRecord(f"output {shown(path)}: sha256 is not 64 hex digits")
    return BlobRef(path, size, digest)
