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
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NotRequired, TypedDict, TypeGuard, cast

from ..errors import FileChange, KilnError, PublishError
from .digest import StatCache, aggregate, sha256_file
from .fileref import FileEntry as FileEntry
from .names import ARCHIVE as ARCHIVE
from .names import MANIFEST as MANIFEST

SCHEMA_VERSION = 1
_SHA256 = re.compile(r"[0-9a-f]{64}")


# One file of a bundle (POSIX path relative to the bundle root, byte size, hex sha256) and the
# published tarball itself (`path` always names.ARCHIVE, beside the published manifest, so a
# reader can check the download before unpacking it): both the JSON form of artifacts.fileref.
ArchiveEntry = FileEntry


class Signature(TypedDict):
    """What a served bundle takes and answers (`predict`, runtime/predict.py, reads it)."""

    task: str  # source.task
    input: str  # the field of an input JSON line that holds the text
    max_length: int  # tokens; longer texts are truncated, as in the build's gates
    labels: list[str]  # label order: the model's output columns
    score: str  # how logits become scores (artifacts/decisions.SCORE_RULE)
    decision: str  # how scores become labels, with thresholds.json
    output: dict[str, str]  # the answer's fields and what they hold
    embedding: NotRequired[dict[str, Any]]  # feature-extraction: dimension, pooling, normalize, ...


class BundleManifest(TypedDict):
    """`manifest.json` inside the tarball. JSON on disk, so a TypedDict: the dict IS the record."""

    schema_version: int
    name: str
    version: str
    backend: str
    files: list[FileEntry]
    aggregate_sha256: str  # derived from `files` (digest.aggregate), never set by hand
    inputs: dict[str, str]
    spec_digest: str
    tools: dict[str, str]
    parity: dict[str, Any]  # stage name -> that gate's report
    metadata: dict[str, Any]
    signature: NotRequired[Signature]  # absent in bundles made before serving signatures


class PublishedManifest(BundleManifest):
    """`manifest.json` beside `bundle.tar.gz`: the bundle manifest plus the tarball's entry."""

    archive: ArchiveEntry


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


def file_entries(root: Path, files: Iterable[str],
                 cache: StatCache | None = None) -> list[FileEntry]:
    """[{path, size, sha256}] for `files` under `root`, hashing through the stat cache if given."""
    entries: list[FileEntry] = []
    for rel in sorted(files):
        path = root / rel
        digest = cache.digest(path) if cache else sha256_file(path)
        entries.append({"path": rel, "size": path.stat().st_size, "sha256": digest})
    return entries


def build(*, name: str, version: str, backend: str, files: list[FileEntry],
          inputs: dict[str, str], spec_digest: str, tools: dict[str, str],
          parity: dict[str, Any] | None = None,
          metadata: dict[str, Any] | None = None,
          signature: Signature | None = None) -> BundleManifest:
    """Assemble a bundle manifest; the aggregate digest is derived from `files`, never passed in."""
    built: BundleManifest = {
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
    if signature is not None:
        built["signature"] = signature
    return built


def with_archive(manifest: BundleManifest, size: int, sha256: str) -> PublishedManifest:
    """The published form: the bundle manifest plus the tarball's own size and digest."""
    return {**manifest, "archive": {"path": ARCHIVE, "size": size, "sha256": sha256}}


def without_archive(published: PublishedManifest) -> BundleManifest:
    """The bundle manifest a published one was made from: what the tarball's copy must equal."""
    inner = {k: v for k, v in published.items() if k != "archive"}
    return cast(BundleManifest, inner)  # the same keys and values, less the one entry


def dumps(manifest: BundleManifest) -> bytes:
    """The one writer of both forms. Stable, reviewable bytes: sorted keys, two-space indent,
    trailing newline."""
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def loads(data: bytes, origin: str) -> BundleManifest:
    """Parse and check a bundle manifest (either form); `origin` names it in errors."""
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise KilnError(f"{origin}: not valid JSON ({exc}); re-publish the bundle") from None
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        raise KilnError(f"{origin}: not a modelkiln manifest (schema_version "
                        f"{SCHEMA_VERSION} expected); re-publish the bundle")
    files = manifest.get("files")
    if not isinstance(files, list) or not all(_is_entry(f) for f in files):
        raise KilnError(f"{origin}: malformed 'files' list; re-publish the bundle")
    for key in ("name", "version", "backend"):
        if not isinstance(manifest.get(key), str) or not manifest[key]:
            raise KilnError(f"{origin}: missing {key!r}; rebuild and re-publish the bundle")
    return cast(BundleManifest, manifest)  # the keys the readers rely on were checked above


def loads_published(data: bytes, origin: str) -> PublishedManifest:
    """Parse and check a published manifest: a bundle manifest whose `archive` entry names
    `bundle.tar.gz` with a size and a sha256. The one place that entry is checked."""
    manifest = loads(data, origin)
    entry = cast(dict[str, Any], manifest).get("archive")
    if not (_is_entry(entry) and entry["path"] == ARCHIVE and entry["size"] >= 0
            and _SHA256.fullmatch(entry["sha256"])):
        raise PublishError(f"{origin}: no valid 'archive' entry (path {ARCHIVE}, size, sha256); "
                           "this is not a published manifest: rebuild the bundle (`kiln build`) "
                           "and publish it (`kiln publish`)")
    return cast(PublishedManifest, manifest)


def _is_entry(value: object) -> TypeGuard[FileEntry]:
    """A {path: str, size: int, sha256: str} record (a file or the archive)."""
    return (isinstance(value, dict) and isinstance(value.get("path"), str)
            and isinstance(value.get("sha256"), str) and isinstance(value.get("size"), int)
            and not isinstance(value.get("size"), bool))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KilnError(f"{path}: cannot read manifest ({exc.strerror}); rebuild or re-publish "
                        "the bundle") from None


def load(path: Path) -> BundleManifest:
    """Read and check a bundle manifest file (either form)."""
    return loads(_read(path), str(path))


def load_published(path: Path) -> PublishedManifest:
    """Read and check a published manifest file (`archive` entry included)."""
    return loads_published(_read(path), str(path))


def compare_tree(root: Path, manifest: BundleManifest) -> list[FileChange]:
    """Re-read every file under `root` and list what differs from `manifest` (always hashes)."""
    expected = {f["path"]: f for f in manifest["files"]}
    changes: list[FileChange] = []
    present: set[str] = set()
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
