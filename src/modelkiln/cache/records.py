"""The action record: what one task produced for one cache key. One writer, one reader (here).

A record names its outputs by relative path, size and sha256 (the blobs that hold their bytes are
content-addressed under `blobs/sha256/<hex>`), the task's report (what its stamp keeps), and the
input digests it was built from. The reader refuses anything malformed, including a path that
could leave the output directory, so a hostile or torn record is a miss, never a write elsewhere.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..artifacts.digest import aggregate, canonical_json

SCHEMA = 1
_HEX = re.compile(r"^[0-9a-f]{64}$")


class BadRecord(ValueError):
    """A record that does not parse or does not describe a usable output set."""


@dataclass(frozen=True)
class BlobRef:
    """One output file: where it goes (relative, POSIX) and the bytes it must have."""

    path: str
    size: int
    sha256: str


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
        return aggregate((b.path, b.sha256) for b in self.outputs)

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
            "outputs_aggregate": self.outputs_aggregate, "report": self.report,
            "inputs": self.inputs, "material": self.material,
        })

    @classmethod
    def from_bytes(cls, data: bytes, key: str) -> ActionRecord:
        """Parse and check a record read for `key`; BadRecord says what is wrong."""
        try:
            raw = json.loads(data)
        except ValueError as exc:
            raise BadRecord(f"not JSON ({exc})") from None
        if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
            raise BadRecord(f"not a schema-{SCHEMA} action record")
        if raw.get("key") != key:
            raise BadRecord(f"written for key {str(raw.get('key'))[:12]}, read as {key[:12]}")
        outputs = tuple(_blob(o) for o in _list(raw.get("outputs")))
        if len({b.path for b in outputs}) != len(outputs):
            raise BadRecord("an output path appears twice")
        record = cls(key=key, task=_str(raw.get("task")), stage=_str(raw.get("stage")),
                     outputs=outputs, report=_dict(raw.get("report")),
                     inputs={k: _str(v) for k, v in _dict(raw.get("inputs")).items()},
                     material=_dict(raw.get("material")))
        if raw.get("outputs_aggregate") != record.outputs_aggregate:
            raise BadRecord("outputs_aggregate does not match its outputs")
        return record


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
    """A relative POSIX path that stays inside its directory: no '..', no absolute, no empties."""
    parts = path.split("/")
    return bool(path) and not path.startswith("/") and "\\" not in path and "\0" not in path \
        and all(p not in ("", ".", "..") for p in parts)


def _blob(value: object) -> BlobRef:
    raw = _dict(value)
    path, size, digest = raw.get("path"), raw.get("size"), raw.get("sha256")
    if not isinstance(path, str) or not safe_relpath(path):
        raise BadRecord(f"output path {path!r} is not a safe relative path")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadRecord(f"output {path}: size {size!r} is not a byte count")
    if not isinstance(digest, str) or not _HEX.match(digest):
        raise BadRecord(f"output {path}: sha256 {digest!r} is not 64 hex digits")
    return BlobRef(path, size, digest)
