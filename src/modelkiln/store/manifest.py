"""The store's own manifest (`versions/<version>/manifest.json`) as a typed record, and the names
the store accepts.

Serving hosts read `{version, checksum, metadata}`. We add what `verify` needs to name every changed,
missing or added file (`files`: path, size, sha256), an ordering that survives copies and backups
(`seq`, not mtimes), where a published bundle came from (`bundle`: the tarball's sha256, which is
also what `kiln store repair` checks a tarball against), and a `seal`: the sha256 of the canonical
JSON of every other field. Without the seal a hand edit of the manifest (a rewritten hash, a
changed metadata value) would simply be believed; with it, any single edit shows as drift.

`checksum` is `aggregate` over (relative path, sha256) of every file in the version except this
manifest, so it can be recomputed with coreutils (`sha256sum` lines, sorted, hashed).

One writer (`build` + `dumps`) and one reader (`read`) of this file; everything else in modelkiln
uses the `StoreManifest` record they return.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts.digest import aggregate, canonical_json, sha256_bytes
from ..artifacts.names import MANIFEST
from ..errors import FileChange, StoreError
from .fs import CannotRead, os_error

FORMAT = "modelkiln.store/1"
STAGING_SUFFIX = ".tmp"
BUNDLE_DIR = "bundle"  # a published version keeps the unpacked bundle in <version>/bundle/
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_RESERVED = {"current", "versions", "pins"}
_KEYS = {"format", "version", "checksum", "metadata", "seq", "files", "bundle", "seal"}

__all__ = ["BUNDLE_DIR", "FORMAT", "MANIFEST", "STAGING_SUFFIX", "BundleRecord", "StoreManifest", "build",
           "check_name", "checksum", "dumps", "read"]

Files = Mapping[str, tuple[int, str]]  # relpath -> (size, sha256)


def check_name(kind: str, name: str) -> str:
    """Return `name` if it is a safe agent or version name, else raise StoreError saying why.

    Names become path components, so anything that could escape the agent directory, hide as a
    dotfile, or collide with staging (`.tmp`) or the layout's own names is refused up front.
    """
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise StoreError(f"bad {kind} name {name!r}: use letters, digits and . _ + - "
                         f"(at most 128, starting with a letter or digit)")
    if name.endswith(STAGING_SUFFIX) or name in _RESERVED:
        raise StoreError(f"bad {kind} name {name!r}: '{STAGING_SUFFIX}' endings and "
                         f"{', '.join(sorted(_RESERVED))} are reserved by the store layout")
    return name


@dataclass(frozen=True)
class BundleRecord:
    """Where a version published from a bundle came from; `archive_sha256` is the tarball's."""

    name: str | None
    version: str | None
    backend: str | None
    archive_sha256: str
    aggregate_sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "backend": self.backend,
                "archive_sha256": self.archive_sha256, "aggregate_sha256": self.aggregate_sha256}

    @classmethod
    def parse(cls, raw: object) -> BundleRecord | None:
        if not isinstance(raw, dict) or not isinstance(raw.get("archive_sha256"), str):
            return None

        def text(key: str) -> str | None:
            value = raw.get(key)
            return value if isinstance(value, str) else None

        return cls(text("name"), text("version"), text("backend"), raw["archive_sha256"],
                   text("aggregate_sha256"))


@dataclass(frozen=True)
class StoreManifest:
    """One version's sealed manifest. `raw` is the parsed JSON exactly as read (or as written),
    kept because the seal covers every field present, including ones this code does not know."""

    version: str
    checksum: str
    seq: int
    files: dict[str, tuple[int, str]]  # relpath -> (size, sha256); malformed rows left out
    metadata: dict[str, Any] = field(default_factory=dict)
    bundle: BundleRecord | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def problems(self, version: str) -> list[FileChange]:
        """Integrity problems of the manifest itself, as changes of `manifest.json` (empty when
        sound): a broken seal, a field no writer puts there, or another version's name."""
        out = []
        stored_seal = self.raw.get("seal")
        actual_seal = seal(self.raw)
        if stored_seal != actual_seal or set(self.raw) - _KEYS:
            out.append(FileChange(MANIFEST, "changed", str(stored_seal), actual_seal))
        if self.raw.get("version") != version:
            out.append(FileChange(MANIFEST, "changed", f"version {version}",
                                  f"version {self.raw.get('version')}"))
        return out

    @property
    def size(self) -> int:
        return sum(s for s, _d in self.files.values())


def build(version: str, files: Files, metadata: Mapping[str, Any], seq: int,
          bundle: BundleRecord | None = None) -> StoreManifest:
    """The sealed manifest for a version whose files are {relpath: (size, sha256)}."""
    try:
        canonical_json(dict(metadata))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"metadata for {version} is not JSON-serialisable ({exc}); pass plain "
                         "str/int/float/bool/list/dict values") from None
    body: dict[str, Any] = {
        "format": FORMAT,
        "version": version,
        "checksum": checksum(files),
        "metadata": dict(metadata),
        "seq": seq,
        "files": [{"path": p, "size": s, "sha256": d} for p, (s, d) in sorted(files.items())],
    }
    if bundle is not None:
        body["bundle"] = bundle.to_json()
    body["seal"] = seal(body)
    return StoreManifest(version, body["checksum"], seq, dict(files), dict(metadata), bundle, body)


def checksum(files: Files) -> str:
    """The deterministic version checksum: `aggregate` over (relpath, sha256)."""
    return aggregate((p, d) for p, (_s, d) in files.items())


def seal(manifest: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of every field but `seal` itself."""
    return sha256_bytes(canonical_json({k: v for k, v in manifest.items() if k != "seal"}))


def dumps(manifest: StoreManifest) -> bytes:
    """Reviewable bytes: sorted keys, two-space indent, trailing newline."""
    return (json.dumps(dict(manifest.raw), indent=2, sort_keys=True) + "\n").encode()


def read(version_dir: Path) -> StoreManifest:
    """Parse a version's manifest; raise StoreError when it is missing, unreadable or not a store
    manifest. Only shape is checked here (enough to list and order versions); `problems` checks
    integrity. A manifest that is a symlink is refused: the store writes only regular files.
    """
    path = version_dir / MANIFEST
    if path.is_symlink():
        raise StoreError(f"{path}: is a symlink, not the manifest the store wrote; restore the "
                         "version (`kiln store repair AGENT VERSION`)")
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise StoreError(f"{path}: missing; this version is incomplete: remove it, or restore it "
                         "from a backup") from None
    except PermissionError as exc:
        raise os_error(exc, path, CannotRead) from None
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: unreadable ({exc}); restore the version from a backup or "
                         "`kiln store rollback` to another one") from None
    if (not isinstance(data, dict) or data.get("format") != FORMAT
            or not isinstance(data.get("checksum"), str) or not isinstance(data.get("seq"), int)
            or not isinstance(data.get("files"), list)):
        raise StoreError(f"{path}: not a modelkiln store manifest ({FORMAT}); restore the version "
                         "from a backup or re-publish it under a new version")
    metadata = data.get("metadata")
    return StoreManifest(str(data.get("version")), data["checksum"], data["seq"],
                         _files(data["files"]), dict(metadata) if isinstance(metadata, dict) else {},
                         BundleRecord.parse(data.get("bundle")), data)


def _files(rows: list[Any]) -> dict[str, tuple[int, str]]:
    """{relpath: (size, sha256)} from `files`, skipping malformed rows (they are then reported as
    added files, since the bytes on disk are unaccounted for)."""
    out = {}
    for row in rows:
        if (isinstance(row, dict) and isinstance(row.get("path"), str)
                and isinstance(row.get("size"), int) and isinstance(row.get("sha256"), str)):
            out[row["path"]] = (row["size"], row["sha256"])
    return out
