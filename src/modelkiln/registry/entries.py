"""Registry entries as frozen dataclasses, and the one rule that merges the two layers.

Fields split in two kinds, and curated entries hold no dynamic fields (a reviewed file must not
change with every build):
- static: what a model *is* — name, backend, description, roles, capabilities, served_model_id,
  metadata. Written by people in the curated layer; a build may also record them in the
  discovered layer, and the curated value wins when both have one.
- dynamic: what was *measured* — version, artifact locations, the file list, the aggregate hash and
  the version lock (locked, expected_hash, last_verified). Only the discovered layer holds them;
  builds and `kiln registry verify/lock/unlock` write them there, so the reviewed curated file is
  never rewritten by a machine.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..artifacts.fileref import FileRef

STATIC = ("backend", "description", "roles", "capabilities", "served_model_id", "metadata", "task",
          "backend_config")
DYNAMIC = ("version", "artifacts", "files", "aggregate_sha256", "version_lock")


@dataclass(frozen=True)
class Artifacts:
    """Where an entry's bytes are. `store` (else `local`) is the directory that verify hashes."""

    store: str | None = None
    s3: str | None = None
    local: str | None = None
    oci: str | None = None  # the model artifact, pinned: HOST/REPO:TAG@sha256:... or oci:DIR:model@...
    image: str | None = None  # the serving image, pinned the same way

    def root(self) -> Path | None:
        """The directory verify hashes: the store version if there is one, else the dist dir."""
        chosen = self.store or self.local
        return Path(chosen) if chosen else None


FileRecord = FileRef  # one file under the artifact directory when it was recorded


@dataclass(frozen=True)
class VersionLock:
    """The deterministic lock: while `locked`, the bytes must hash to `expected_hash`."""

    locked: bool = False
    expected_hash: str | None = None
    last_verified: str | None = None


@dataclass(frozen=True)
class RegistryEntry:
    """One logical model, merged from the layers (or one layer's view of it)."""

    name: str
    backend: str | None = None
    description: str | None = None
    roles: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    served_model_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    version: str | None = None
    artifacts: Artifacts = field(default_factory=Artifacts)
    files: tuple[FileRecord, ...] = ()
    aggregate_sha256: str | None = None
    version_lock: VersionLock = field(default_factory=VersionLock)
    task: str | None = None  # the spec's source.task: what the model does
    backend_config: Mapping[str, Any] = field(default_factory=dict)  # e.g. a vLLM launch

    @property
    def installed(self) -> bool:
        """True when a local artifact directory (store or dist) exists on this machine."""
        return any(p and Path(p).is_dir() for p in (self.artifacts.store, self.artifacts.local))

    @property
    def expected_hash(self) -> str | None:
        """What verify compares against: the locked hash, else the last recorded one."""
        if self.version_lock.locked and self.version_lock.expected_hash:
            return self.version_lock.expected_hash
        return self.aggregate_sha256

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written to the registry files: empty and unset fields left out."""
        out: dict[str, Any] = {"name": self.name}
        for key in (*STATIC, *DYNAMIC):
            value = getattr(self, key)
            if key == "artifacts":
                value = {k: v for k, v in asdict(value).items() if v is not None}
            elif key == "files":
                value = [asdict(f) for f in value]
            elif key == "version_lock":
                value = asdict(value) if value != VersionLock() else None
            elif isinstance(value, tuple):
                value = list(value)
            elif key in ("metadata", "backend_config"):
                value = dict(value)
            if value not in (None, [], {}):
                out[key] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RegistryEntry:
        """Build from schema-valid JSON (the loader has already checked every type)."""
        lock = data.get("version_lock") or {}
        return cls(
            name=data["name"],
            backend=data.get("backend"),
            description=data.get("description"),
            roles=tuple(data.get("roles", ())),
            capabilities=tuple(data.get("capabilities", ())),
            served_model_id=data.get("served_model_id"),
            metadata=dict(data.get("metadata") or {}),
            version=data.get("version"),
            artifacts=Artifacts(**(data.get("artifacts") or {})),
            files=tuple(FileRecord(f["path"], f["size"], f["sha256"]) for f in data.get("files", ())),
            aggregate_sha256=data.get("aggregate_sha256"),
            version_lock=VersionLock(bool(lock.get("locked", False)), lock.get("expected_hash"),
                                     lock.get("last_verified")),
            task=data.get("task"), backend_config=dict(data.get("backend_config") or {}),
        )


def merge(curated: RegistryEntry | None, discovered: RegistryEntry | None) -> RegistryEntry:
    """One entry from the two layers: discovered supplies dynamic fields, curated wins on static
    ones it sets (a reviewed role or capability list overrides what a build recorded)."""
    if curated is None and discovered is None:
        raise ValueError("merge needs at least one layer")
    if discovered is None:
        assert curated is not None
        return curated
    if curated is None:
        return discovered
    overrides = {key: getattr(curated, key) for key in STATIC
                 if getattr(curated, key) not in (None, (), {})}
    return replace(discovered, **overrides)


def merge_all(curated: Mapping[str, RegistryEntry],
              discovered: Mapping[str, RegistryEntry]) -> dict[str, RegistryEntry]:
    """Every name of either layer, merged, sorted by name."""
    return {name: merge(curated.get(name), discovered.get(name))
            for name in sorted(set(curated) | set(discovered))}
