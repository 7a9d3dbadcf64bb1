"""Publishing a built bundle into the model store: stage, unpack, check, finalize.

Layout of a published version:

    versions/<version>/manifest.json   the STORE manifest ({version, checksum, metadata} + files + seal)
    versions/<version>/bundle/         the unpacked bundle, byte for byte what the tarball holds,
                                       including the bundle's own manifest.json

Why a `bundle/` subdirectory: serving hosts read the store's own `manifest.json` at the version root,
and the bundle must keep its own `manifest.json` under that name (the runtime and serving code
read it there). Flattening would force renaming one of them; keeping `bundle.tar.gz` instead of
unpacking would double the disk and leave readers to unpack. A serving process points
`REGISTRY_*_PATH` at `<get_current(agent)>/bundle`.

Large files are shared between versions: a bundle file of at least `REUSE_MIN` bytes whose sha256
one of the agent's newest versions already holds (a shard that did not change between two
versions of a sharded checkpoint) is hard-linked from there instead of unpacked again; its bytes
in the tarball are skipped. The old copy is checked against its recorded sha256 first (through the
project's stat cache, so a file it already vouches for is not read again), and versions are never
written in place (repair swaps a fresh copy in), so a shared inode stays what both manifests say.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from ..artifacts import manifest as mf
from ..artifacts.digest import StatCache, sha256_file
from ..artifacts.install import unpack_checked
from ..errors import DriftError, FileChange, KilnError, PublishError
from ..store import BUNDLE_DIR, BundleRecord, ModelStore, diff, read_manifest, scan, stat_key
from .bundle import DistBundle

REUSE_MIN = 16 << 10  # below this, writing a file costs no more than vouching for an old one
REUSE_VERSIONS = 4  # how many of the agent's newest versions are looked in for shared files


@dataclass(frozen=True)
class StoreResult:
    """What `publish_to_store` did. `noop`: these bytes were already published; nothing changed.
    `repaired`: they were, but the copy was damaged and `--force` restored it from the tarball."""

    agent: str
    version: str
    path: Path  # versions/<version>
    bundle_path: Path  # versions/<version>/bundle
    checksum: str
    archive_sha256: str
    noop: bool
    current: bool
    repaired: bool = False


def publish_to_store(dist_dir: Path, root: Path | str | None, agent: str, version: str,
                     metadata: Mapping[str, Any] | None = None, *, activate: bool = True,
                     store: ModelStore | None = None, force: bool = False,
                     cache: StatCache | None = None) -> StoreResult:
    """Publish `dist/<name>/<version>/<backend>/` into `<root>/<agent>/versions/<version>/`.

    The tarball is checked against its published manifest before a byte is unpacked, unpacked
    with `safe_extract`, which hashes every file as it writes it and checks it against the
    bundle's manifest; those digests, once checked, are handed to `finalize` as `known`, so no
    unpacked file is read back to be hashed (finalize only flushes them to disk).
    Same archive again: no-op. A different archive under an existing version: ConflictError.
    With `force`, an existing version's bytes are re-read too, and a damaged copy is restored
    from this (verified) tarball by `ModelStore.repair` instead of being reported unchanged.
    `cache` (the project's stat cache) spares re-hashing a tarball the build or an earlier
    publisher step already hashed.
    """
    dist = DistBundle.load(Path(dist_dir), cache)
    published = mf.loads_published(dist.manifest_bytes, str(Path(dist_dir) / mf.MANIFEST))
    store = store or ModelStore(root)
    found = _already_there(store, agent, version, dist.sha256, dist.archive, force)
    if found is not None:
        return found
    expected = {f"{BUNDLE_DIR}/{f['path']}": (f["size"], f["sha256"]) for f in published["files"]}
    with store.stage_new(agent, version) as tmp:
        # Every listed file is hashed as it is written and checked against the manifest, and the
        # bundle's own manifest.json must equal the published one. Each file is fsynced as it is
        # written, while the next one is being unpacked, so finalize's flush finds them clean.
        reuse = reusable(store, agent, published["files"], cache)
        unpack_checked(dist.archive, tmp / BUNDLE_DIR, published, durable=True, reuse=reuse,
                       fix=f"the dist directory {dist_dir} is damaged, rebuild the bundle")
        tree = scan(tmp)
        inner_rel = f"{BUNDLE_DIR}/{mf.MANIFEST}"
        # safe_extract refused unlisted, missing and wrongly sized files; check the tree anyway
        # (cheap: names and sizes only) before handing the checked digests on.
        unpacked = {r: (st.st_size, expected.get(r, (0, "unlisted"))[1])
                    for r, st in tree.files.items() if r != inner_rel}
        changes = diff(expected, unpacked, tree.odd) + [
            FileChange(r, "changed", f"{n} bytes", f"{unpacked[r][0]} bytes")
            for r, (n, _d) in expected.items() if r in unpacked and unpacked[r][0] != n]
        if changes:
            raise PublishError(f"{dist.archive}: unpacked files differ from its manifest ("
                               + "; ".join(map(str, changes)) + "); rebuild the bundle")
        # The manifest's digests, each just checked against the bytes written, ARE the digests:
        # finalize reads none of these files again (only the bundle's own small manifest.json).
        known = {rel: (stat_key(tree.files[rel]), d) for rel, (_s, d) in expected.items()}
        # Decided under the agent lock (held from stage_new to finalize): racing publishers of
        # different versions leave the highest one current, whichever commits last.
        activate = activate and becomes_current(version, store.current_version(agent))
    source = BundleRecord(dist.name, dist.version, dist.backend, dist.sha256,
                          published.get("aggregate_sha256"))
    info = store.finalize(agent, version, metadata, activate=activate, bundle=source, known=known)
    if cache is not None and not info.noop:  # the next version vouches for these without reading
        for rel, (size, digest) in expected.items():
            if size >= REUSE_MIN:
                cache.remember(info.path / rel, digest)
        cache.save()
    return StoreResult(agent, version, info.path, info.path / BUNDLE_DIR, info.checksum or "",
                       dist.sha256, info.noop, info.current)


def reusable(store: ModelStore, agent: str, files: list[mf.FileEntry],
             cache: StatCache | None) -> dict[str, Path]:
    """Bundle path -> a file of one of the agent's newest versions holding exactly its bytes."""
    wanted: dict[str, list[str]] = {}
    for f in files:
        if f["size"] >= REUSE_MIN:
            wanted.setdefault(f["sha256"], []).append(f["path"])
    found: dict[str, Path] = {}
    for info in reversed(store.list_versions(agent)[-REUSE_VERSIONS:]):
        if not wanted:
            break
        try:
            old = read_manifest(info.path)
        except KilnError:
            continue  # a damaged version lends nothing
        for rel, (size, digest) in sorted(old.files.items()):
            paths = wanted.get(digest)
            src = info.path / rel
            if not paths or not rel.startswith(BUNDLE_DIR + "/"):
                continue
            try:
                ok = src.stat().st_size == size and (
                    cache.digest(src) if cache is not None else sha256_file(src)) == digest
            except OSError:
                ok = False
            if ok:
                found.update((p, src) for p in wanted.pop(digest))
    return found


def _already_there(store: ModelStore, agent: str, version: str, archive_sha: str,
                   archive: Path, force: bool) -> StoreResult | None:
    """Same archive already published -> no-op (other archive -> ConflictError), decided by the
    store under its lock (`ModelStore.ensure_present`). With `force` the bytes are re-read and a
    damaged copy repaired from `archive`. A version finalized without a bundle record is left to
    `finalize`, which compares checksums after unpacking."""
    repaired = False
    try:
        info = store.ensure_present(agent, version, archive_sha, check_bytes=force)
    except DriftError:
        info = store.repair(agent, version, archive)
        repaired = True
    if info is None:
        return None
    return StoreResult(agent, version, info.path, info.path / BUNDLE_DIR, info.checksum or "",
                       archive_sha, not repaired, info.current, repaired)


def becomes_current(new: str, current: str | None) -> bool:
    """Does publishing `new` make it current? The rule `kiln publish` follows, under the lock.

    Yes when nothing is current, or when `new` is higher than the current version in PEP 440
    order (1.10.0 > 1.9.0 > 1.9.0rc1), so the highest version wins among concurrent publishers
    whichever order they commit in, and a rollback stays put until something newer than its
    target is published. Where either version is not PEP 440 (`distilled-3f2a9c1`), there is
    no order to go by and the publish that commits last becomes current.
    """
    if current is None:
        return True
    try:
        return Version(new) > Version(current)
    except InvalidVersion:
        return True
