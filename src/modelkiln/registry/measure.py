"""Hashing an entry's artifact directory: the bytes behind `verify`, `lock --set-expected` and
`record_discovered`.

What `kiln registry verify` proves, next to `kiln store verify`: the store's verify checks a
version against the store's own sealed manifest (nothing changed since it was finalized); the
registry's checks the same bytes against the hash the registry recorded or locked (they are still
the bytes that were reviewed and locked), and the store manifest's seal as well. A changed,
missing or added file, a symlink in place of a file or of the version directory, or a broken
manifest is drift (exit 2) in both; a file this process may not read is exit 1 in both.

The directory is the store version (`MODEL_STORE_ROOT/<agent>/versions/<v>`) when the entry has
one, else the local dist directory. For a store version the store's own `manifest.json` is left out
of the file list, so the entry's aggregate equals the store checksum (one number everywhere), and
the manifest is checked by its seal instead: a hand edit of it still shows as drift.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..artifacts.digest import aggregate
from ..errors import FileChange, KilnError, StoreError
from ..store import MANIFEST as STORE_MANIFEST
from ..store import CannotRead, Digests, diff, hash_tree, read_manifest, scan
from .entries import FileRecord, RegistryEntry


@dataclass(frozen=True)
class Measured:
    """What is on disk now under an entry's artifact directory (every byte re-read)."""

    root: Path
    files: Digests
    odd: dict[str, str]
    aggregate_sha256: str
    manifest_changes: tuple[FileChange, ...] = ()

    def records(self) -> tuple[FileRecord, ...]:
        return tuple(FileRecord(p, s, d) for p, (s, d) in sorted(self.files.items()))

    def changes_from(self, recorded: tuple[FileRecord, ...]) -> list[FileChange]:
        """Changed, missing and added files against a recorded list, plus manifest problems."""
        if any(c.path == "." for c in self.manifest_changes):  # the directory itself is wrong
            return list(self.manifest_changes)
        expected = {f.path: (f.size, f.sha256) for f in recorded}
        return [*self.manifest_changes, *diff(expected, self.files, self.odd)]

    @property
    def size(self) -> int:
        return sum(s for s, _d in self.files.values())


def artifact_root(entry: RegistryEntry) -> Path:
    """The directory to hash, or a KilnError saying how to give the entry one."""
    root = entry.artifacts.root()
    if root is None:
        raise KilnError(f"{entry.name}: no local artifact (store or dist path) to hash; publish "
                        "it to the model store or build it here first (`kiln build`)")
    return root


def measure(entry: RegistryEntry, workers: int | None = None) -> Measured:
    """Re-read and hash every file under the entry's artifact directory."""
    root = artifact_root(entry)
    is_store = bool(entry.artifacts.store)
    if is_store and root.is_symlink():  # the store writes real directories only
        link = FileChange(".", "changed", "directory", f"symlink to {os.readlink(root)}")
        return Measured(root, {}, {}, "", (link,))
    tree = scan(root, exclude=frozenset({STORE_MANIFEST}) if is_store else frozenset())
    files = hash_tree(root, tree, workers=workers)
    total = aggregate((p, d) for p, (_s, d) in files.items())
    changes: list[FileChange] = []
    if is_store:
        mpath = root / STORE_MANIFEST
        try:
            if mpath.is_symlink():
                raise StoreError("manifest.json is a symlink")
            changes = read_manifest(root).problems(root.name)
        except CannotRead:
            raise  # exit 1 "cannot read", never drift
        except StoreError as exc:
            kind = "missing" if not (mpath.exists() or mpath.is_symlink()) else "changed"
            changes = [FileChange(STORE_MANIFEST, kind, None, str(exc).split(";")[0])]
    return Measured(root, files, dict(tree.odd), total, tuple(changes))


def recorded_from_store(root: Path) -> tuple[tuple[FileRecord, ...], str] | None:
    """File list and checksum from a store version's sealed manifest, without reading payload bytes.

    Used when recording a version that was sealed moments ago by this process's publish; verify
    re-reads everything. None when the manifest is missing or fails its seal.
    """
    try:
        manifest = read_manifest(root)
    except StoreError:
        return None
    if manifest.problems(root.name):
        return None
    records = tuple(FileRecord(p, s, d) for p, (s, d) in sorted(manifest.files.items()))
    return records, manifest.checksum


def store_location(root: Path) -> tuple[Path, str, str] | None:
    """(store root, agent, version) for a `<root>/<agent>/versions/<version>` path, else None."""
    parts = root.parts
    if len(parts) >= 4 and parts[-2] == "versions":
        return Path(*parts[:-3]), parts[-3], parts[-1]
    return None
