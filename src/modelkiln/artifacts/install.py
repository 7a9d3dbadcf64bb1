"""Unpack a published bundle tarball into a fresh directory, checking every byte against its manifest.

The runtime bootstrap (installing a downloaded bundle on a serving host) and the model store
(publishing a built bundle into `versions/<v>/bundle/`) unpack the same thing with the same
distrust, so they share this one function: `safe_extract` writes only the files the published
manifest lists, each of exactly its size, hashing it as it is written and refusing a sha256 that
differs; nothing unlisted, nothing missing. Then the bundle's own `manifest.json` (the one file
the published manifest cannot list: it lists the others) must equal the published manifest
less its `archive` entry. Where the directory goes afterwards (a rename, a store finalize) is
the caller's business.

A manifest that declares more files than the host unpacks (KILN_EXTRACT_MAX_FILES) is refused from
the manifest alone (`refuse_too_many`), before a byte is downloaded or written: the archive holds
every listed file plus `manifest.json`, so its extraction would stop at the limit anyway, after
writing (and fsyncing) that many files.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..errors import PublishError
from . import manifest as mf
from .extract import UnsafeArchive, safe_extract
from .extract_limits import ENV_MAX_FILES, Limits


class BundleMismatch(PublishError):
    """The unpacked bundle is not what its published manifest describes (bytes or manifest)."""


def unpack_checked(archive: Path, dest: Path, published: mf.PublishedManifest, *,
                   fix: str, durable: bool = True, limits: Limits | None = None,
                   reuse: Mapping[str, Path] | None = None) -> list[str]:
    """Unpack `archive` into the empty directory `dest` and prove it is `published`'s bundle.

    The caller has already checked the archive's own size and sha256 against `published`.
    `fix` ends every mismatch message (what the reader should do: rebuild, re-publish).
    `durable` fsyncs every file and directory; `limits` are the host's extraction ceilings.
    `reuse`: files already holding a member's bytes, hard-linked instead of written (safe_extract).
    Returns the unpacked files, sorted. Raises BundleMismatch for bytes or a manifest that differ
    from `published`, UnsafeArchive for anything else safe_extract refuses; `dest` is left empty
    (or, after a manifest mismatch, holding what the caller must discard).
    """
    refuse_too_many(published, limits if limits is not None else Limits.from_env(), str(archive))
    files = published["files"]
    sizes: dict[str, int | None] = {f["path"]: f["size"] for f in files}
    sizes[mf.MANIFEST] = None  # the bundle's own manifest: compared whole below
    try:
        unpacked = safe_extract(archive, dest, sizes=sizes, durable=durable, limits=limits,
                                sha256s={f["path"]: f["sha256"] for f in files}, reuse=reuse)
    except UnsafeArchive as exc:
        if not exc.why.startswith("sha256"):
            raise
        raise BundleMismatch(f"{archive}: {exc.member} differs from the published manifest "
                             f"({exc.why}); {fix}") from None
    inner = mf.load(dest / mf.MANIFEST)
    if inner != mf.without_archive(published):
        raise BundleMismatch(f"{archive}: the manifest.json inside the bundle differs from the "
                             f"published manifest.json; {fix}")
    return unpacked


def refuse_too_many(published: mf.PublishedManifest, limits: Limits, origin: str) -> None:
    """UnsafeArchive when the manifest lists more files (with `manifest.json` itself) than
    `limits` lets one extraction write; call it before downloading the archive."""
    count = len(published["files"]) + 1
    if count > limits.max_files:
        raise UnsafeArchive(origin, mf.MANIFEST, f"the manifest declares {count} files, more than the "
                            f"{limits.max_files} files and directories this host unpacks (the "
                            f"host limit {ENV_MAX_FILES}), so nothing was downloaded or written",
                            f"if the bundle is trusted, raise {ENV_MAX_FILES} on this host")
