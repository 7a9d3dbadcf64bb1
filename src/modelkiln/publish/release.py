"""Release one built bundle everywhere its spec says: S3 / file://, the model store, the registry.

Order: content first (the remote copy, then the store version), and the
registry's discovered layer is written last, so the registry never points at bytes that are not
published. Every step is idempotent: the same bytes again upload nothing and change nothing.

Destinations, in precedence order: an explicit `to` (`kiln publish --to`, `doit publish to=...`,
or $KILN_PUBLISH_URI), the spec's `publish.s3`, then the embedded default
`file://<project>/published/{name}/{version}/{backend}/`. `to=local` names the embedded default
explicitly, so the README's main job runs with no credentials. The store root and the registry
directory are answered by `modelkiln.paths`. OCI (publish/oci.py): `to=oci://...` or the spec's
`publish.oci` pushes the model artifact (and the image, with `image.push`) before the store and
the registry; `to=oci://...` replaces the S3/file:// copy.

A locked registry entry (`kiln registry lock`) refuses other bytes before anything is sent:
`refuse_locked_backends` predicts, for every backend of the run, the hash the registry would
record, and refuses (exit 2) before the first upload, push, store write or signature.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..artifacts import manifest as mf
from ..artifacts import names
from ..artifacts.digest import sha256_bytes, stat_cache
from ..artifacts.gunzip import GzipCorrupt, GzipStream
from ..artifacts.tarheaders import BadTar, TarReader
from ..errors import PublishError
from ..model.bundle import Bundle
from ..model.kinds import task_capabilities
from ..model.version import resolve
from ..paths import Layout, registry_dir, store_root
from ..registry import Artifacts, RegistryEntry, locked_entries, record_discovered, refuse_locked
from ..registry.measure import measure
from ..signing import sign_if_configured
from ..stages.kinds import backend_config as kind_backend_config
from ..store import BUNDLE_DIR, ModelStore
from ..store.manifest import checksum
from . import PublishResult, publish_bundle, render_destination
from .bundle import DistBundle
from .oci import SCHEME as OCI_SCHEME
from .oci import OciRelease, as_publish_result, release_oci
from .store import StoreResult, publish_to_store

LOCAL = "local"


@dataclass(frozen=True)
class Release:
    """What publishing one backend of one bundle did."""

    name: str
    backend: str
    version: str
    remote: PublishResult
    store: StoreResult | None
    registry_name: str | None
    oci: OciRelease | None = None  # the model artifact / serving image pushed or recorded

    @property
    def remote_is_artifact(self) -> bool:
        """The remote copy is the OCI artifact push (`to=oci://...`), not a tarball upload:
        callers ask this rather than the destination's scheme."""
        pushed = self.oci.artifact if self.oci is not None else None
        return pushed is not None and self.remote.archive_uri == pushed.pinned


def default_destination(root: Path) -> str:
    return Layout(root).published.as_uri() + "/{name}/{version}/{backend}/"


def destination_template(bundle: Bundle, to: str | None = None) -> str:
    chosen = to or os.environ.get("KILN_PUBLISH_URI") or None
    if chosen == LOCAL:
        return default_destination(bundle.root)
    return chosen or bundle.publish.s3 or default_destination(bundle.root)


def _would_record(bundle: Bundle, dist: Path, cache_root: Path) -> str:
    """The aggregate hash `release` would record for `dist`, before anything is published.

    Into a store: the store version's checksum, which is the bundle's files as its manifest lists
    them plus that manifest (what `publish_to_store` unpacks and finalizes), so no byte is
    unpacked to know it. Without a store the entry points at the dist directory, hashed as
    `record_discovered` would (after signing, which writes beside the tarball)."""
    if bundle.publish.store is not None:
        dist_bundle = DistBundle.load(dist, stat_cache(cache_root))
        published = mf.loads_published(dist_bundle.manifest_bytes, str(dist / names.MANIFEST))
        files = {f"{BUNDLE_DIR}/{f['path']}": (f["size"], f["sha256"]) for f in published["files"]}
        inner = _inner_manifest(dist_bundle.archive)
        files[f"{BUNDLE_DIR}/{names.MANIFEST}"] = (len(inner), sha256_bytes(inner))
        return checksum(files)
    sign_if_configured(dist, bundle.root)
    return measure(RegistryEntry("", artifacts=Artifacts(local=str(dist)))).aggregate_sha256


def _inner_manifest(archive: Path) -> bytes:
    """The bundle's own manifest.json as the tarball holds it (the published one adds the
    archive's digest, so differs); b"" when the tarball has none (the store would refuse it)."""
    try:
        with open(archive, "rb", buffering=0) as raw:
            reader = TarReader(GzipStream(raw).read)
            while (member := reader.next()) is not None:
                if member.name == names.MANIFEST and not member.isdir():
                    return b"".join(iter(lambda: reader.read(1 << 20), b""))
    except (BadTar, GzipCorrupt, OSError) as exc:
        raise PublishError(f"{archive}: cannot read its manifest.json ({exc}); rebuild the "
                           "bundle") from None
    return b""


def refuse_locked_backends(bundle: Bundle, backends: Iterable[str], *,
                           explicit_registry: Path | None = None) -> None:
    """DriftError (exit 2) when any backend's registry entry is locked at other bytes than
    this publish would record; called for every backend of a run before the first is released,
    so a refusal leaves every destination as it was. Free when nothing is locked."""
    where = registry_dir(explicit_registry, root=bundle.root)
    names_ = {f"{bundle.name}-{b}": b for b in backends}
    locked = locked_entries(names_, registry_dir=where)
    if not locked:
        return
    layout = Layout(bundle.root)
    version = resolve(bundle.version, bundle.root)
    for name, entry in sorted(locked.items()):
        dist = layout.dist_dir(bundle.name, version, names_[name])
        refuse_locked(entry, _would_record(bundle, dist, layout.state), version)


def release(bundle: Bundle, backend: str, *, to: str | None = None, force: bool = False,
            explicit_registry: Path | None = None,
            progress: Callable[[int], None] | None = None) -> Release:
    """Publish dist/<name>/<version>/<backend>/ to its destination, the store and the registry."""
    layout = Layout(bundle.root)
    version = resolve(bundle.version, bundle.root)
    dist = layout.dist_dir(bundle.name, version, backend)
    refuse_locked_backends(bundle, (backend,), explicit_registry=explicit_registry)
    sign_if_configured(dist, bundle.root)  # KILN_SIGNING_KEY[_FILE]: signature files go first
    oci = release_oci(bundle, backend, version, to=to, force=force, progress=progress)
    pushed = oci.artifact if oci is not None and (to or "").startswith(OCI_SCHEME) else None
    via_oci = pushed is not None  # `--to oci://...`: the artifact push is the remote copy
    if pushed is not None:
        remote = as_publish_result(pushed, bundle, backend, version,
                                   DistBundle.load(dist, stat_cache(layout.state)).sha256)
    else:
        target = render_destination(destination_template(bundle, to), name=bundle.name,
                                    version=version, backend=backend)
        remote = publish_bundle(dist, target, force=force, progress=progress,
                                cache=stat_cache(layout.state))
    stored = None
    target_store = bundle.publish.store
    with contextlib.ExitStack() as held:
        if target_store is not None:
            agent = target_store.agent.replace("{backend}", backend)
            root = store_root(template=target_store.root, root=bundle.root)
            store = ModelStore(root)
            # Held until the registry has recorded the version: a concurrent `kiln store prune`
            # then waits, and finds the version named by the registry (so keeps it).
            held.enter_context(store.holding(agent))
            stored = publish_to_store(dist, root, agent, version, dict(bundle.metadata),
                                      store=store, force=force, cache=stat_cache(layout.state))
        reg = bundle.registry
        entry = RegistryEntry(
            name=f"{bundle.name}-{backend}", backend=backend,
            description=bundle.description or None, roles=reg.roles,
            capabilities=task_capabilities(bundle.source.task, reg.capabilities),
            task=bundle.source.task,
            backend_config=kind_backend_config(bundle, reg.served_id or f"{bundle.name}:{version}"),
            served_model_id=reg.served_id or f"{bundle.name}:{version}",
            metadata=dict(bundle.metadata), version=version,
            artifacts=Artifacts(store=str(stored.path) if stored else None,
                                s3=None if via_oci else remote.archive_uri,
                                local=None if stored else str(dist),
                                oci=oci.artifact_ref if oci else None,
                                image=oci.image_ref if oci else None))
        where = registry_dir(explicit_registry, root=bundle.root)
        recorded = record_discovered(entry, registry_dir=where)
    return Release(bundle.name, backend, version, remote, stored, recorded.name, oci)
