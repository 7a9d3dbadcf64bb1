"""Import a discovered entry into the curated layer: the runbook's "Import from Download History".

The curated file is the reviewed, hand-written layer, and builds never write it. Import is the one
deliberate exception a person asks for (from `kiln ui`): it adds one entry holding only static
fields (backend, description, roles, capabilities, served_model_id, metadata), so the curated
layer stays free of dynamic state as the layer rules require; the discovered layer keeps the
version, artifacts, files, hash and lock. The entry's other top-level keys (`$schema`, `comment`)
and the existing entries are kept as they are, in their order; the file is rewritten with the
registry's own two-space JSON (hand formatting inside the file is not preserved) and then goes
through review like any edit.

The new file is checked by the same loader as every registry read before it replaces the old one
(a temporary beside it, named so a killed writer's leftover is swept), under the registry lock.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifacts.atomic import fsync_dir, write_bytes
from ..errors import KilnError, SpecError, UsageError
from ..store import os_errors
from .entries import RegistryEntry
from .layers import CURATED, SCHEMA_VERSION, RegistryFiles, _load

_IMPORT_TEMP = ".model_registry.import.tmp"  # matches layers._TEMP_GLOB: swept if left behind


@dataclass(frozen=True)
class StaticFields:
    """What a person fills in when importing: the static fields of an entry."""

    backend: str | None = None
    description: str | None = None
    roles: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    served_model_id: str | None = None
    metadata: Mapping[str, Any] | None = None


def import_discovered(name: str, fields: StaticFields, *,
                      registry_dir: Path | str | None = None) -> RegistryEntry:
    """Add `name` (a discovered-only entry) to the curated layer with `fields`; the merged entry.

    UsageError (64) when the name is not in the discovered layer or is already curated; SpecError
    (3) when a field breaks the registry schema (nothing is written then)."""
    files = RegistryFiles(registry_dir)
    with os_errors(files.directory, KilnError):
        files.directory.mkdir(parents=True, exist_ok=True)
    with files.lock.held():
        layers = files.load()
        if name in layers.curated:
            raise UsageError(f"{name}: already in {files.curated}; edit it there (reviewed)")
        if name not in layers.discovered:
            raise UsageError(f"{name}: not in the discovered layer ({files.discovered}); only "
                             "entries a publish recorded can be imported")
        found = layers.discovered[name]
        entry = RegistryEntry(
            name, backend=fields.backend or found.backend, description=fields.description or None,
            roles=_unique(fields.roles), capabilities=_unique(fields.capabilities),
            served_model_id=fields.served_model_id or None,
            metadata=dict(fields.metadata or {}))
        data = _with_entry(files.curated, entry)
        temp = files.directory / _IMPORT_TEMP
        with os_errors(files.directory, KilnError):
            write_bytes(temp, data)
        try:
            _entries, problems = _load(temp, "curated")
            if problems:
                raise SpecError([_renamed(p, temp, files.curated) for p in problems])
            with os_errors(files.curated, KilnError):
                os.replace(temp, files.curated)
                fsync_dir(files.directory)
        finally:
            if temp.exists():
                temp.unlink()
    layers = files.load()
    files.refresh_snapshot(layers)
    return layers.merged[name]


def _unique(values: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v.strip() for v in values if v.strip()))


def _with_entry(path: Path, entry: RegistryEntry) -> bytes:
    """The curated file's bytes with `entry` appended (a new file when there is none)."""
    doc: dict[str, Any]
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        doc = {"schema_version": SCHEMA_VERSION, "comment": "Reviewed in pull requests. Static "
               "fields only; builds record versions, paths and hashes in the discovered layer.",
               "entries": []}
    except (OSError, ValueError) as exc:
        raise KilnError(f"{path}: cannot be read as JSON ({exc}); fix it (`kiln registry list` "
                        "shows where) before importing") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
        raise KilnError(f"{path}: not a registry layer (no entries list); fix it before importing")
    doc["entries"] = [*doc["entries"], entry.to_dict()]
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode()


def _renamed(problem: Any, temp: Path, final: Path) -> Any:
    """A problem found in the temporary file, reported against the curated file's name."""
    from dataclasses import replace

    return replace(problem, file=problem.file.replace(str(temp), str(final))
                   .replace(temp.name, CURATED))
