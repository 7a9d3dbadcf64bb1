"""The registry's three files: curated (hand-edited), discovered (machine-written), snapshot (merged).

    <dir>/model_registry.curated.json      reviewed in pull requests; never written by modelkiln
    <dir>/model_registry.discovered.json   written by publishes and verify/lock/unlock, under a lock
    <dir>/model_registry.json              regenerated from the two after every write; never edited

`<dir>` is the explicit argument, else $KILN_REGISTRY_DIR, else `configs/` under the project
(`modelkiln.paths.registry_dir`). Both source layers go through the spec loader (`schema/registry.schema.json`), so a
malformed file is a SpecError (exit 3) with file:line:col problems, never a traceback. The snapshot
is never read back: consumers may read it, modelkiln always merges the sources itself.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from ..artifacts.atomic import write_bytes
from ..artifacts.lock import FileLock
from ..errors import KilnError, Problem, SpecError
from ..paths import registry_dir
from ..store import os_errors
from .entries import DYNAMIC, RegistryEntry, merge_all

CURATED = "model_registry.curated.json"
DISCOVERED = "model_registry.discovered.json"
SNAPSHOT = "model_registry.json"
_LOCK = ".model_registry.lock"
_TEMP_GLOB = ".model_registry*.tmp"  # what `write_bytes` leaves when killed mid-write
SCHEMA_VERSION = 1
_SNAPSHOT_COMMENT = (f"Generated from {CURATED} and {DISCOVERED}; do not edit. Change the curated "
                     "file (reviewed) or run `kiln registry verify/lock/unlock`.")


@dataclass(frozen=True)
class Layers:
    """Both source layers as loaded, and their merge."""

    curated: dict[str, RegistryEntry]
    discovered: dict[str, RegistryEntry]

    @property
    def merged(self) -> dict[str, RegistryEntry]:
        return merge_all(self.curated, self.discovered)


def _load(path: Path, layer: str) -> tuple[dict[str, RegistryEntry], list[Problem]]:
    """One layer's entries by name, plus every problem in the file (shape and layer rules)."""
    from ..spec import load_document  # yaml/jsonschema stay unimported until a file is read

    if not path.exists():
        return {}, []
    try:
        doc = load_document(path, schema="registry")
    except SpecError as exc:
        return {}, exc.problems
    entries: dict[str, RegistryEntry] = {}
    first: dict[str, int] = {}
    problems = []
    for i, raw in enumerate(doc.data["entries"]):
        name = raw["name"]
        if name in first:
            problems.append(doc.problem(("entries", i, "name"), f"duplicate name '{name}'",
                                        f"already defined at entries[{first[name]}]; keep one"))
            continue
        first[name] = i
        if layer == "curated":
            for key in DYNAMIC:
                if key in raw:
                    problems.append(doc.problem(
                        ("entries", i, key), f"'{key}' is dynamic state, not allowed in the curated "
                        "layer", f"remove it: publishes and `kiln registry verify/lock` record it "
                        f"in {DISCOVERED}", at_key=True))
        entries[name] = RegistryEntry.from_dict(raw)
    return entries, problems


class LayerDocument(TypedDict):
    """The JSON shape of every registry file (the schema is `schema/registry.schema.json`);
    entries go through `RegistryEntry.to_dict` / `from_dict`, their one writer and reader."""

    schema_version: int
    comment: NotRequired[str]
    entries: list[dict[str, Any]]


def dumps(entries: dict[str, RegistryEntry], comment: str | None = None) -> bytes:
    """A layer file's bytes: entries sorted by name, two-space indent, trailing newline."""
    body: LayerDocument = {"schema_version": SCHEMA_VERSION,
                           "entries": [entries[name].to_dict() for name in sorted(entries)]}
    if comment:
        body = {"schema_version": SCHEMA_VERSION, "comment": comment, "entries": body["entries"]}
    return (json.dumps(body, indent=2, ensure_ascii=False) + "\n").encode()


class RegistryFiles:
    """Read the layers; change the discovered one under a lock; regenerate the snapshot."""

    def __init__(self, directory: Path | str | None = None):
        self.directory = registry_dir(directory)
        self.curated = self.directory / CURATED
        self.discovered = self.directory / DISCOVERED
        self.snapshot = self.directory / SNAPSHOT

    def load(self) -> Layers:
        """Both layers; one SpecError (exit 3) listing every problem of both files."""
        curated, p1 = _load(self.curated, "curated")
        discovered, p2 = _load(self.discovered, "discovered")
        if p1 or p2:
            raise SpecError(p1 + p2)
        return Layers(curated, discovered)

    @property
    def lock(self) -> FileLock:
        """`<dir>/.model_registry.lock`: one writer of the discovered layer and snapshot at a time."""
        return FileLock(self.directory / _LOCK)

    def _sweep(self) -> None:
        """Under the lock: remove temporary files killed writers left (every writer holds the lock
        while its temporary file exists, so any found now belongs to a dead one)."""
        for leftover in self.directory.glob(_TEMP_GLOB):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()

    @contextlib.contextmanager
    def editing(self) -> Iterator[tuple[Layers, dict[str, RegistryEntry]]]:
        """Hold the registry lock; yield the layers and a mutable copy of the discovered entries.

        On a clean exit the discovered file is rewritten atomically (if it changed) and the
        snapshot regenerated, so concurrent publishers never lose each other's entries. An OS
        error (a full disk, a read-only checkout) is one KilnError line naming the path and fix,
        and leaves both files as they were.
        """
        with os_errors(self.directory, KilnError):
            self.directory.mkdir(parents=True, exist_ok=True)
            self.lock.acquire()
        try:
            with os_errors(self.directory, KilnError):
                self._sweep()
            layers = self.load()
            work = dict(layers.discovered)
            yield layers, work
            with os_errors(self.discovered, KilnError):
                if work != layers.discovered or not self.discovered.exists():
                    write_bytes(self.discovered, dumps(work, "Written by modelkiln; edit "
                                                       f"{CURATED} instead."))
                self._write_snapshot(Layers(layers.curated, work))
        finally:
            self.lock.release()

    def _write_snapshot(self, layers: Layers) -> bool:
        """Write the snapshot if its bytes would change; True when it was written."""
        data = dumps(layers.merged, _SNAPSHOT_COMMENT)
        try:
            if self.snapshot.read_bytes() == data:
                return False
        except OSError:
            pass
        write_bytes(self.snapshot, data)
        return True

    def refresh_snapshot(self, layers: Layers) -> bool:
        """Regenerate a stale snapshot after a read. Skipped (False, not an error) when a writer
        holds the lock (it regenerates the snapshot itself) or the checkout is read-only or full,
        where reading the registry must still work."""
        if dumps(layers.merged, _SNAPSHOT_COMMENT) == _read_or_none(self.snapshot):
            return False
        try:
            if not self.lock.try_acquire():
                return False
        except OSError:
            return False
        try:
            self._sweep()
            return self._write_snapshot(self.load())
        except OSError:
            return False
        finally:
            self.lock.release()


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None
