"""The runtime directory a bootstrap installs into, whatever the bundle's source (tarball or OCI).

    <REGISTRY_RUNTIME_DIR>/<backend>/.lock                   one bootstrap at a time
    <backend>/versions/<version>-<sha12>/                    a verified, unpacked bundle
    <backend>/versions/<version>-<sha12>.verified.json       what was verified (VerifiedRecord)
    <backend>/versions/.<version>-<sha12>.*.tmp/             a work directory being filled
    <backend>/current -> versions/<version>-<sha12>          swapped with os.replace

A version directory is filled in a hidden work directory and renamed into place only when
complete; its record is written after the rename, so a record never vouches for a directory it
did not see. "Cheap" verification of a cached version compares the record with the directory's
stat (size, mtime_ns, inode of every file, nothing added); `full` re-hashes every file instead.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from ..artifacts import manifest as mf
from ..artifacts.atomic import fsync_dir, swap_symlink, write_bytes
from ..artifacts.digest import canonical_json
from ..artifacts.lock import FileLock
from ..errors import KilnError, PublishError

DEFAULT_RUNTIME_DIR = "data/models/registry_runtime"
RECORD_SUFFIX = ".verified.json"
# What the spec schema allows a version to be; it names a directory here, so nothing else passes.
VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")

FileStats = dict[str, list[int]]  # relative path -> [size, mtime_ns, inode]


class VerifiedRecord(TypedDict):
    """What a bootstrap saw when it verified a version directory (the `.verified.json` file)."""

    archive_sha256: str  # the tarball's sha256, or an OCI artifact's manifest digest (hex)
    files: FileStats | None
    version: str


def runtime_base(env: Mapping[str, str], backend: str) -> Path:
    """`<REGISTRY_RUNTIME_DIR>/<backend>`, absolute."""
    root = Path(env.get("REGISTRY_RUNTIME_DIR") or DEFAULT_RUNTIME_DIR).expanduser().absolute()
    return root / backend


def full_verify(verify: str | None, env: Mapping[str, str]) -> bool:
    """True for REGISTRY_VERIFY=full (re-hash every file), False for `stat` (the default)."""
    mode = (verify or env.get("REGISTRY_VERIFY") or "stat").strip().lower()
    if mode not in ("stat", "full"):
        raise KilnError(f"REGISTRY_VERIFY={mode!r}: use 'stat' (default) or 'full'")
    return mode == "full"


@dataclass(frozen=True)
class Slot:
    """Where one version of a bundle lives under `<backend>/versions/`."""

    versions: Path
    vid: str  # <version>-<first 12 hex of the archive or artifact digest>

    @classmethod
    def of(cls, base: Path, version: str, sha: str) -> Slot:
        return cls(base / "versions", f"{version}-{sha[:12]}")

    @property
    def directory(self) -> Path:
        return self.versions / self.vid

    @property
    def record(self) -> Path:
        return self.versions / (self.vid + RECORD_SUFFIX)


@dataclass(frozen=True)
class Staging:
    """A work directory for one install: `tree` is filled (and becomes the version directory);
    anything else under `work` (a downloaded tarball) is removed afterwards."""

    work: Path
    tree: Path


@contextmanager
def locked(base: Path) -> Iterator[None]:
    """One bootstrap per runtime dir at a time (workers started together queue, then hit the
    cache); an OSError in the block is one PublishError naming the path."""
    try:
        base.mkdir(parents=True, exist_ok=True)
        with FileLock(base / ".lock").held():
            yield
    except OSError as exc:  # the runtime dir (or a file in it) cannot be read or written
        raise PublishError(f"{exc.filename or base}: {exc.strerror or exc}; check "
                           "REGISTRY_RUNTIME_DIR, its permissions and free space, then run the "
                           "bootstrap again (current still points at the previous version)"
                           ) from None


def is_cached(slot: Slot, sha: str, published: mf.PublishedManifest, full: bool) -> bool:
    """Is the slot's directory the verified unpacking of `sha`, untouched since?"""
    try:
        seen = json.loads(slot.record.read_bytes())
    except (OSError, ValueError):
        return False
    if not isinstance(seen, dict) or seen.get("archive_sha256") != sha:
        return False
    if stat_tree(slot.directory) != seen.get("files"):
        return False
    if full:
        inner = mf.without_archive(published)
        try:
            on_disk = mf.load(slot.directory / mf.MANIFEST)
        except KilnError:
            return False
        return on_disk == inner and not mf.compare_tree(slot.directory, inner)
    return True


def stat_tree(root: Path) -> FileStats | None:
    """{relative path: [size, mtime_ns, inode]} of every file; None if anything is not regular."""
    out: FileStats = {}
    if not root.is_dir() or root.is_symlink():
        return None
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            if os.path.islink(os.path.join(dirpath, name)):
                return None
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if not os.path.isfile(path) or os.path.islink(path):
                return None
            out[os.path.relpath(path, root).replace(os.sep, "/")] = [
                st.st_size, st.st_mtime_ns, st.st_ino]
    return out


@contextmanager
def installing(slot: Slot, sha: str, version: str) -> Iterator[Staging]:
    """Yield a fresh work directory to fill `tree` in; when the block ends normally, rename the
    tree into the slot (setting aside whatever unverified directory was there) and record it.
    The work directory is removed in every case. Hold `locked(base)` around this."""
    slot.versions.mkdir(parents=True, exist_ok=True)
    sweep(slot.versions)
    work = Path(tempfile.mkdtemp(prefix=f".{slot.vid}.", suffix=".tmp", dir=slot.versions))
    try:
        staging = Staging(work, work / "tree")
        yield staging
        stats = stat_tree(staging.tree)
        slot.record.unlink(missing_ok=True)  # the old record must never vouch for a new directory
        if slot.directory.exists() or slot.directory.is_symlink():
            os.replace(slot.directory, work / "damaged")
        os.replace(staging.tree, slot.directory)
        fsync_dir(slot.versions)
        record = VerifiedRecord(archive_sha256=sha, files=stats, version=version)
        write_bytes(slot.record, canonical_json(record))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def point_current(base: Path, vid: str) -> None:
    """Point `current` at versions/<vid>; on a switch, prune all versions but the new one and
    the one it replaced (running workers, quick rollback)."""
    previous = swap_symlink(base / "current", f"versions/{vid}")
    if previous == f"versions/{vid}":
        return  # nothing switched: keep what the last switch kept (current and its predecessor)
    prune(base / "versions", {vid} | ({Path(previous).name} if previous else set()))


def prune(versions: Path, keep: set[str]) -> None:
    """Remove versions other than `keep` (their record first, so none is trusted half-deleted)."""
    for entry in sorted(versions.iterdir()):
        if entry.name.startswith(".") or entry.name.endswith(RECORD_SUFFIX):
            continue
        if entry.name not in keep:
            (versions / (entry.name + RECORD_SUFFIX)).unlink(missing_ok=True)
            shutil.rmtree(entry, ignore_errors=True)
    for rec in versions.glob("*" + RECORD_SUFFIX):
        if not (versions / rec.name[: -len(RECORD_SUFFIX)]).exists():
            rec.unlink(missing_ok=True)


def sweep(versions: Path) -> None:
    """Remove work directories a killed bootstrap left (we hold the lock, so none is live)."""
    for entry in versions.iterdir():
        if entry.name.startswith(".") and entry.name.endswith(".tmp"):
            shutil.rmtree(entry, ignore_errors=True)
