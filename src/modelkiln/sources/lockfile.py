"""`bundles/<name>.lock`: what each remote source of a spec resolved to, file by file.

One reader (`read`) and one writer (`write`). The text is JSON laid out for review: one source per
block, one file per line, sorted, so a PR that moves a checkpoint to a new training run shows
exactly the files whose digests changed. Nothing in it depends on when or where it was written, so
locking the same remote state twice gives the same bytes.

Per source: `uri` as the spec writes it, `resolved` (an immutable reference: the OCI manifest
digest, the HF commit, or for S3 the digest of every object's ETag/version id), and per file its
path below the source, size, sha256 and `ref` (the store's own identity of that object: the S3
ETag or version id a fetch is pinned to with If-Match, the OCI blob digest, the HF blob id).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..artifacts.atomic import write_bytes
from ..artifacts.digest import aggregate
from ..artifacts.fileref import FileRef
from ..artifacts.statefile import read_regular
from ..errors import ExitCode, KilnError

VERSION = 1
SUFFIX = ".lock"
MAX_LOCK_BYTES = 64 << 20
_HEX = re.compile(r"^[0-9a-f]{64}$")


class BadLock(KilnError):
    """A lock file that cannot be read or is not one; the fix is to write it again."""

    exit_code = ExitCode.SPEC


@dataclass(frozen=True)
class LockedFile(FileRef):
    """A source's file (path POSIX, relative to the source) and the revision it was locked at."""

    ref: str = ""


@dataclass(frozen=True)
class LockEntry:
    uri: str
    resolved: str
    files: tuple[LockedFile, ...]

    @property
    def tree(self) -> str:
        """The digest naming this source's files as a whole (the fetch cache's tree directory)."""
        return aggregate((f.path, f.sha256) for f in self.files)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, path: str) -> LockedFile | None:
        return next((f for f in self.files if f.path == path), None)


def lock_path(spec: Path) -> Path:
    """bundles/<name>.yaml -> bundles/<name>.lock"""
    return spec.with_suffix(SUFFIX)


def render(entries: list[LockEntry]) -> bytes:
    """The lock's bytes: stable, sorted, one file per line."""
    blocks = []
    for e in sorted(entries, key=lambda e: e.uri):
        files = ",\n".join("        " + json.dumps({"path": f.path, "size": f.size, "sha256": f.sha256,
                                                     "ref": f.ref}, ensure_ascii=False)
                           for f in sorted(e.files, key=lambda f: f.path))
        blocks.append(f'    {{\n      "uri": {json.dumps(e.uri)},\n      "resolved": '
                      f'{json.dumps(e.resolved)},\n      "files": [\n{files}\n      ]\n    }}')
    body = "\n" + ",\n".join(blocks) + "\n  " if blocks else ""
    return f'{{\n  "version": {VERSION},\n  "sources": [{body}]\n}}\n'.encode()


def write(path: Path, entries: list[LockEntry]) -> bool:
    """Write the lock when its bytes change; True when it did."""
    data = render(entries)
    if read_regular(path, MAX_LOCK_BYTES) == data:
        return False
    write_bytes(path, data)
    return True


def read(path: Path) -> dict[str, LockEntry] | None:
    """uri -> entry; None when there is no lock file; BadLock when it is not a lock."""
    if not path.exists():
        return None
    raw = read_regular(path, MAX_LOCK_BYTES)
    fix = f"write it again with `kiln lock {path.stem}`"
    if raw is None:
        raise BadLock(f"{path}: not a readable regular file of at most 64 MiB; {fix}")
    try:
        data = json.loads(raw)
        return parse(data)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise BadLock(f"{path}: not a modelkiln lock ({str(exc)[:120]}); {fix}") from None


def parse(data: object) -> dict[str, LockEntry]:
    """Lock JSON -> entries; ValueError/KeyError/TypeError for anything of another shape."""
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise ValueError(f"expected version {VERSION}")
    out = {}
    for s in data["sources"]:
        files = []
        for f in s["files"]:
            path, size, sha, ref = f["path"], f["size"], f["sha256"], f.get("ref", "")
            if not (isinstance(path, str) and safe_rel(path) and isinstance(size, int)
                    and size >= 0 and isinstance(sha, str) and _HEX.match(sha)
                    and isinstance(ref, str)):
                raise ValueError(f"bad file entry {str(f)[:80]}")
            files.append(LockedFile(path, size, sha, ref))
        uri, resolved = s["uri"], s["resolved"]
        if not isinstance(uri, str) or not isinstance(resolved, str):
            raise TypeError("uri and resolved must be strings")
        out[uri] = LockEntry(uri, resolved, tuple(sorted(files, key=lambda f: f.path)))
    return out


def safe_rel(path: str) -> bool:
    """A relative POSIX path with no empty, '.' or '..' part and no NUL or backslash: a name that
    stays inside the tree it is placed in."""
    parts = path.split("/")
    return bool(path) and "\x00" not in path and "\\" not in path and all(
        p not in ("", ".", "..") for p in parts)
