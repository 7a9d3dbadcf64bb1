"""Restoring a damaged store version from the tarball it was published from.

Trust: the version's sealed manifest records the tarball's sha256 (`bundle.archive_sha256`) and
every file's size and sha256. A tarball is used only if its sha256 equals the recorded one, and the
repaired copy is swapped in only if every file in it re-hashes to the manifest. A manifest whose
seal is broken is not trusted to name the tarball: that version must be re-published or restored
from a backup.

Swap: the repaired copy is built in `versions/.<v>.repair/` and exchanged with `versions/<v>` in one
`renameat2(RENAME_EXCHANGE)` (Linux 3.15+, the common local filesystems), so a reader resolving
`current` finds the damaged copy or the repaired one, never nothing. Where the kernel or filesystem
refuses the exchange, two renames are used, and a crash between them is finished by `recover`
(a complete `.<v>.repair` with no `<v>` beside it is renamed into place). Python's standard library
has no exchange call, hence the few lines of ctypes.
"""
from __future__ import annotations

import ctypes
import errno
import os
import shutil
from pathlib import Path

from ..artifacts.atomic import fsync_dir
from ..artifacts.digest import sha256_file
from ..artifacts.extract import UnsafeArchive, safe_extract
from ..errors import StoreError
from . import manifest as sm
from .fs import DELETING_SUFFIX, diff, fsync_dirs, hash_tree, remove_tree, scan

REPAIR_SUFFIX = ".repair"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _work_dir(adir: Path, version: str) -> Path:
    return adir / "versions" / f".{version}{REPAIR_SUFFIX}"


def restore(adir: Path, version: str, archive: Path, workers: int | None) -> None:
    """Under the agent lock: rebuild `versions/<version>` from `archive` and swap it in."""
    vdir = adir / "versions" / version
    manifest = _trusted_manifest(vdir, version)
    record = manifest.bundle
    if record is None:
        raise StoreError(f"{vdir}: was not published from a bundle tarball, so there is nothing "
                         "to restore it from; re-publish it under a new version")
    actual = sha256_file(archive)
    if actual != record.archive_sha256:
        raise StoreError(f"{archive}: sha256 {actual}, but {vdir} was published from "
                         f"{record.archive_sha256}; use the tarball it was published from")
    outside = sorted(r for r in manifest.files if not r.startswith(f"{sm.BUNDLE_DIR}/"))
    if outside:
        raise StoreError(f"{vdir}: {outside[0]} is not part of the published bundle, so the "
                         "tarball cannot restore it; restore the version from a backup")
    work = _work_dir(adir, version)
    if work.exists() or work.is_symlink():
        remove_tree(work)
    work.mkdir()
    try:
        _unpack(archive, work, manifest, workers)
        _swap(work, vdir)
    finally:
        if work.exists() or work.is_symlink():
            remove_tree(work)  # after a swap it holds the damaged copy


def _trusted_manifest(vdir: Path, version: str) -> sm.StoreManifest:
    manifest = sm.read(vdir)
    if manifest.problems(version):
        raise StoreError(f"{vdir / sm.MANIFEST}: fails its seal, so the tarball it names cannot be "
                         "trusted; re-publish under a new version or restore from a backup")
    return manifest


def _unpack(archive: Path, work: Path, manifest: sm.StoreManifest, workers: int | None) -> None:
    """Unpack into `work/bundle`, write the manifest, and check every byte against it."""
    prefix = f"{sm.BUNDLE_DIR}/"
    inside = {r[len(prefix):]: v for r, v in manifest.files.items()}
    try:
        safe_extract(archive, work / sm.BUNDLE_DIR, sizes={r: s for r, (s, _d) in inside.items()},
                     sha256s={r: d for r, (_s, d) in inside.items()}, durable=True)
    except UnsafeArchive as exc:
        raise StoreError(f"{archive}: cannot restore from it ({exc.member}: {exc.why}); use the "
                         "tarball the version was published from") from None
    tree = scan(work)
    actual = hash_tree(work, tree, workers=workers)
    changes = diff(manifest.files, actual, tree.odd)
    if changes:
        raise StoreError(f"{archive}: unpacked files differ from the version's manifest ("
                         + "; ".join(map(str, changes)) + "); use the tarball it was published from")
    (work / sm.MANIFEST).write_bytes(sm.dumps(manifest))
    fsync_dirs(work, {**tree.files, sm.MANIFEST: None})


def _swap(work: Path, vdir: Path) -> None:
    if _exchange(work, vdir):
        fsync_dir(vdir.parent)
        return
    if vdir.exists() or vdir.is_symlink():
        os.rename(vdir, vdir.with_name(f".{vdir.name}{DELETING_SUFFIX}"))
    os.rename(work, vdir)
    fsync_dir(vdir.parent)
    shutil.rmtree(vdir.with_name(f".{vdir.name}{DELETING_SUFFIX}"), ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two names atomically; False when the kernel or filesystem cannot (then use renames)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def recover(adir: Path) -> None:
    """Under the lock: finish a repair killed between its two renames, drop any other leftover."""
    versions = adir / "versions"
    for entry in versions.iterdir():
        name = entry.name
        if not (name.startswith(".") and name.endswith(REPAIR_SUFFIX)):
            continue
        final = versions / name[1:-len(REPAIR_SUFFIX)]
        complete = (entry / sm.MANIFEST).is_file() and not entry.is_symlink()
        if complete and not (final.exists() or final.is_symlink()):
            os.rename(entry, final)
            fsync_dir(versions)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink()
