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
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..artifacts.atomic import write_bytes
from ..errors import Problem, SpecError
from ..paths import registry_dir
from .entries import DYNAMIC, RegistryEntry, merge_all

CURATED = "model_registry.curated.json"
DISCOVERED = "model_registry.discovered.json"
SNAPSHOT = "model_registry.json"
_LOCK = ".model_registry.lock"
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


def dumps(entries: dict[str, RegistryEntry], comment: str | None = None) -> bytes:
    """A layer file's bytes: entries sorted by name, two-space indent, trailing newline."""
    body: dict[str, object] = {"schema_version": SCHEMA_VERSION}
    if comment:
        body["comment"] = comment
    body["entries"] = [entries[name].to_dict() for name in sorted(entries)]
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

    @contextlib.contextmanager
    def _locked(self, blocking: bool = True) -> Iterator[bool]:
        """Hold `<dir>/.model_registry.lock`; yields False (without waiting) when `blocking` is
        off and another process holds it."""
        fd = os.open(self.directory / _LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o664)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def editing(self) -> Iterator[tuple[Layers, dict[str, RegistryEntry]]]:
        """Hold the registry lock; yield the layers and a mutable copy of the discovered entries.

        On a clean exit the discovered file is rewritten atomically (if it changed) and the
        snapshot regenerated, so concurrent publishers never lose each other's entries.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._locked():
            layers = self.load()
            work = dict(layers.discovered)
            yield layers, work
            if work != layers.discovered or not self.discovered.exists():
                write_bytes(self.discovered, dumps(work, "Written by modelkiln; edit "
                                                   f"{CURATED} instead."))
            self._write_snapshot(Layers(layers.curated, work))

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
        holds the lock (it regenerates the snapshot itself) or the checkout is read-only, where
        reading the registry must still work."""
        if dumps(layers.merged, _SNAPSHOT_COMMENT) == _read_or_none(self.snapshot):
            return False
        try:
            with self._locked(blocking=False) as held:
                return held and self._write_snapshot(self.load())
        except OSError:
            return False


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None
