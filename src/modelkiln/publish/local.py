"""Publishing to a local directory (file:///abs/path/ or a plain path): S3's guarantees on disk.

Layout and order match S3: `<dest>/bundle.tar.gz`, then `<dest>/manifest.json` last. The tarball
goes in by temp file + fsync + rename. The manifest, the commit point, goes in by temp file +
fsync + `os.link`, which fails if the name exists: the on-disk twin of S3's `If-None-Match: *`,
so two publishers racing on one version cannot both win. force=True first removes the old
manifest (so readers see "not published" rather than a new tarball under an old manifest),
replaces the tarball, then writes the manifest with os.replace.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import time
from pathlib import Path

from ..artifacts import manifest as mf
from ..artifacts.atomic import fsync_dir, staged_file
from ..artifacts.digest import HashingWriter, sha256_file
from ..errors import ConflictError, PublishError
from ..transport import local_path
from .bundle import DistBundle, Progress, PublishResult, existing_archive_sha

CHUNK = 256 << 10  # small reused-size pieces: multi-MiB ones page-fault on every allocation
STALE_S = 3600  # temp files older than this are a killed publisher's debris


def publish(bundle: DistBundle, destination: str, *, force: bool = False,
            progress: Progress | None = None) -> PublishResult:
    """Publish `bundle` into the directory `destination` names; see the module doc."""
    dest = local_path(destination)
    uri = dest.as_uri() + "/"
    try:
        dest.mkdir(parents=True, exist_ok=True)
        _sweep(dest)
        return _publish(bundle, dest, uri, force, progress)
    except OSError as exc:
        raise PublishError(f"{dest}: cannot publish ({exc.strerror or exc}); check the path and "
                           "its permissions, then run the command again") from None


def _publish(bundle: DistBundle, dest: Path, uri: str, force: bool,
             progress: Progress | None) -> PublishResult:
    archive, manifest = dest / mf.ARCHIVE, dest / mf.MANIFEST
    result = PublishResult(destination=uri, archive_uri=uri + mf.ARCHIVE,
                           manifest_uri=uri + mf.MANIFEST, name=bundle.name,
                           version=bundle.version, backend=bundle.backend,
                           archive_sha256=bundle.sha256)
    replaced = None
    existing = _read(manifest)
    if existing is not None:
        existing_sha = existing_archive_sha(existing, str(manifest))
        if existing_sha == bundle.sha256:
            if _intact(archive, bundle):
                return dataclasses.replace(result, unchanged=True,
                                           skipped=(mf.ARCHIVE, mf.MANIFEST))
            # Same version, tarball lost or damaged: writing the same bytes back is a repair.
            _copy(bundle, archive, progress)
            return dataclasses.replace(result, uploaded=(mf.ARCHIVE,), skipped=(mf.MANIFEST,),
                                 bytes_uploaded=bundle.size)
        if not force:
            raise ConflictError(str(manifest), existing_sha, bundle.sha256)
        replaced = existing_sha
        manifest.unlink()  # un-commit first: readers see "not published", never a mismatch
        fsync_dir(dest)

    uploaded, skipped, sent = [], [], 0
    if not force and _intact(archive, bundle):
        skipped.append(mf.ARCHIVE)  # left by an interrupted publish of these same bytes
    else:
        _copy(bundle, archive, progress)
        uploaded.append(mf.ARCHIVE)
        sent += bundle.size
    _commit(bundle, manifest, force)
    uploaded.append(mf.MANIFEST)
    sent += len(bundle.manifest_bytes)
    if progress:
        progress(len(bundle.manifest_bytes))
    return dataclasses.replace(result, uploaded=tuple(uploaded), skipped=tuple(skipped),
                         bytes_uploaded=sent, forced=replaced is not None, replaced=replaced)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _intact(archive: Path, bundle: DistBundle) -> bool:
    """Does `archive` hold exactly the bundle's bytes? (size first; hash only when it matches)"""
    try:
        if archive.stat().st_size != bundle.size:
            return False
    except FileNotFoundError:
        return False
    return sha256_file(archive) == bundle.sha256


def _copy(bundle: DistBundle, target: Path, progress: Progress | None) -> None:
    """Copy the tarball to `target` via a temp file beside it: fsync, rename, fsync the dir."""
    with staged_file(target) as tmp:
        with open(bundle.archive, "rb") as src, open(tmp, "wb") as raw:
            out = HashingWriter(raw)  # hash the bytes as they are copied, not in a second read
            while chunk := src.read(CHUNK):
                out.write(chunk)
                if progress:
                    progress(len(chunk))
        if out.hexdigest() != bundle.sha256:  # the source changed under us mid-copy
            raise PublishError(f"{bundle.archive}: changed while it was being published; "
                               "rebuild it and publish again")


def _commit(bundle: DistBundle, manifest: Path, force: bool) -> None:
    """Write the manifest last; without force, only if no manifest exists (link fails if so)."""
    fd, name = tempfile.mkstemp(prefix=f".{manifest.name}.", suffix=".tmp", dir=manifest.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(bundle.manifest_bytes)
            f.flush()
            os.fsync(f.fileno())
        if force:
            os.replace(tmp, manifest)
        else:
            try:
                os.link(tmp, manifest)
            except FileExistsError:
                raced = _read(manifest) or b""
                other = existing_archive_sha(raced, str(manifest))
                if other != bundle.sha256:
                    raise ConflictError(str(manifest), other, bundle.sha256) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_dir(manifest.parent)


def _sweep(dest: Path) -> None:
    """Remove stale `.bundle.tar.gz.*.tmp` / `.manifest.json.*.tmp` debris of killed publishers."""
    now = time.time()
    for entry in dest.iterdir():
        if entry.name.startswith((f".{mf.ARCHIVE}.", f".{mf.MANIFEST}.")) \
                and entry.name.endswith(".tmp"):
            with contextlib.suppress(OSError):
                if now - entry.lstat().st_mtime > STALE_S:
                    entry.unlink()
