"""Bundle manifests: what a bundle holds, byte for byte, and what it was built from.

Two forms share one shape:
- the *bundle manifest* `manifest.json` inside the tarball: every other file's path, size and
  sha256, their aggregate digest, input digests, spec digest, tool versions, parity results;
- the *published manifest* `manifest.json` beside `bundle.tar.gz`: the same plus `archive`
  (the tarball's size and sha256), so a reader can check the download before unpacking it.

Nothing here holds a wall-clock time, so rebuilding identical inputs gives identical bytes.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from .names import ARCHIVE, MANIFEST
from ..errors import FileChange, KilnError
from .digest import StatCache, aggregate, sha256_file

SCHEMA_VERSION = 1


def list_files(root: Path) -> list[str]:
    """Every regular file under `root` as sorted POSIX relative paths, the manifest excluded."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            rel = Path(dirpath, name).relative_to(root).as_posix()
            if rel != MANIFEST:
                out.append(rel)
    return sorted(out)


def file_entries(root: Path, files: Iterable[str], cache: StatCache | None = None) -> list[dict]:
    """[{path, size, sha256}] for `files` under `root`, hashing through the stat cache if given."""
    entries = []
    for rel in sorted(files):
        path = root / rel
        digest = cache.digest(path) if cache else sha256_file(path)
        entries.append({"path": rel, "size": path.stat().st_size, "sha256": digest})
    return entries


def build(*, name: str, version: str, backend: str, files: list[dict], inputs: dict[str, str],
          spec_digest: str, tools: dict[str, str], parity: dict | None = None,
          metadata: dict | None = None) -> dict[str, Any]:
    """Assemble a bundle manifest; the aggregate digest is derived from `files`, never passed in."""
    return {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "version": version,
        "backend": backend,
        "files": files,
        "aggregate_sha256": aggregate((f["path"], f["sha256"]) for f in files),
        "inputs": dict(sorted(inputs.items())),
        "spec_digest": spec_digest,
        "tools": dict(sorted(tools.items())),
        "parity": parity or {},
        "metadata": metadata or {},
    }


def with_archive(manifest: dict, size: int, sha256: str) -> dict:
    """The published form: the bundle manifest plus the tarball's own size and digest."""
    return {**manifest, "archive": {"path": ARCHIVE, "size": size, "sha256": sha256}}


def dumps(manifest: dict) -> bytes:
    """Stable, reviewable bytes: sorted keys, two-space indent, trailing newline."""
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def loads(data: bytes, origin: str) -> dict:
    """Parse and sanity-check a manifest; `origin` names it in errors."""
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise KilnError(f"{origin}: not valid JSON ({exc}); re-publish the bundle") from None
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        raise KilnError(f"{origin}: not a modelkiln manifest (schema_version "
                        f"{SCHEMA_VERSION} expected); re-publish the bundle")
    files = manifest.get("files")
    if not isinstance(files, list) or not all(
            isinstance(f, dict) and isinstance(f.get("path"), str)
            and isinstance(f.get("sha256"), str) and isinstance(f.get("size"), int) for f in files):
        raise KilnError(f"{origin}: malformed 'files' list; re-publish the bundle")
    return manifest


def load(path: Path) -> dict:
    """Read and check a manifest file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KilnError(f"{path}: cannot read manifest ({exc.strerror})") from None
    return loads(data, str(path))


def compare_tree(root: Path, manifest: dict) -> list[FileChange]:
    """Re-read every file under `root` and list what differs from `manifest` (always hashes)."""
    expected = {f["path"]: f for f in manifest["files"]}
    changes = []
    present = set()
    for rel in list_files(root):
        present.add(rel)
        path = root / rel
        if rel not in expected:
            changes.append(FileChange(rel, "added"))
        elif path.is_symlink() or not path.is_file():
            changes.append(FileChange(rel, "changed", expected[rel]["sha256"], "not a regular file"))
        else:
            actual = sha256_file(path)
            if actual != expected[rel]["sha256"]:
                changes.append(FileChange(rel, "changed", expected[rel]["sha256"], actual))
    changes += [FileChange(rel, "missing") for rel in sorted(set(expected) - present)]
    return sorted(changes, key=lambda c: c.path)
