"""The store's own manifest (`versions/<version>/manifest.json`) and the names the store accepts.

Serving hosts read `{version, checksum, metadata}`. We add what `verify` needs to name every changed,
missing or added file (`files`: path, size, sha256), an ordering that survives copies and backups
(`seq`, not mtimes), where a published bundle came from (`bundle`), and a `seal`: the sha256 of the
canonical JSON of every other field. Without the seal a hand edit of the manifest (a rewritten hash,
a changed metadata value) would simply be believed; with it, any single edit shows as drift.

`checksum` is `aggregate` over (relative path, sha256) of every file in the version except this
manifest, so it can be recomputed with coreutils (`sha256sum` lines, sorted, hashed).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

from ..artifacts.names import MANIFEST
from ..artifacts.digest import aggregate, canonical_json, sha256_bytes
from ..errors import FileChange, StoreError

FORMAT = "modelkiln.store/1"
STAGING_SUFFIX = ".tmp"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_RESERVED = {"current", "versions", "pins"}
_KEYS = {"format", "version", "checksum", "metadata", "seq", "files", "bundle", "seal"}


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


def build(version: str, files: Mapping[str, tuple[int, str]], metadata: Mapping[str, Any],
          seq: int, bundle: Mapping[str, Any] | None = None) -> dict[str, Any]:
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
        body["bundle"] = dict(bundle)
    body["seal"] = seal(body)
    return body


def checksum(files: Mapping[str, tuple[int, str]]) -> str:
    """The deterministic version checksum: `aggregate` over (relpath, sha256)."""
    return aggregate((p, d) for p, (_s, d) in files.items())


def seal(manifest: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of every field but `seal` itself."""
    return sha256_bytes(canonical_json({k: v for k, v in manifest.items() if k != "seal"}))


def dumps(manifest: Mapping[str, Any]) -> bytes:
    """Reviewable bytes: sorted keys, two-space indent, trailing newline."""
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def read(version_dir: Path) -> dict[str, Any]:
    """Parse a version's manifest; raise StoreError when it is missing or not a store manifest.

    Only shape is checked here (enough to list and order versions); `problems` checks integrity.
    """
    path = version_dir / MANIFEST
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise StoreError(f"{path}: missing; this version is incomplete: remove it, or restore it "
                         "from a backup") from None
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: unreadable ({exc}); restore the version from a backup or "
                         "`kiln store rollback` to another one") from None
    if (not isinstance(data, dict) or data.get("format") != FORMAT
            or not isinstance(data.get("checksum"), str) or not isinstance(data.get("seq"), int)
            or not isinstance(data.get("files"), list)):
        raise StoreError(f"{path}: not a modelkiln store manifest ({FORMAT}); restore the version "
                         "from a backup or re-publish it under a new version")
    return data


def problems(manifest: Mapping[str, Any], version: str) -> list[FileChange]:
    """Integrity problems of the manifest itself, as changes of `manifest.json` (empty when sound)."""
    out = []
    stored_seal = manifest.get("seal")
    actual_seal = seal(manifest)
    if stored_seal != actual_seal or set(manifest) - _KEYS:
        out.append(FileChange(MANIFEST, "changed", str(stored_seal), actual_seal))
    if manifest.get("version") != version:
        out.append(FileChange(MANIFEST, "changed", f"version {version}",
                              f"version {manifest.get('version')}"))
    return out


def expected_files(manifest: Mapping[str, Any]) -> dict[str, tuple[int, str]]:
    """{relpath: (size, sha256)} from a manifest's `files`, skipping malformed rows (they will be
    reported as added files, since the bytes on disk are then unaccounted for)."""
    out = {}
    for row in manifest.get("files", []):
        if (isinstance(row, dict) and isinstance(row.get("path"), str)
                and isinstance(row.get("size"), int) and isinstance(row.get("sha256"), str)):
            out[row["path"]] = (row["size"], row["sha256"])
    return out
