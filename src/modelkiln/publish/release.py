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
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..artifacts.digest import stat_cache
from ..model.bundle import Bundle
from ..model.version import resolve
from ..paths import Layout, registry_dir, store_root
from ..registry import Artifacts, RegistryEntry, record_discovered
from ..signing import sign_if_configured
from ..store import ModelStore
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


def default_destination(root: Path) -> str:
    return Layout(root).published.as_uri() + "/{name}/{version}/{backend}/"


def destination_template(bundle: Bundle, to: str | None = None) -> str:
    chosen = to or os.environ.get("KILN_PUBLISH_URI") or None
    if chosen == LOCAL:
        return default_destination(bundle.root)
    return chosen or bundle.publish.s3 or default_destination(bundle.root)


def release(bundle: Bundle, backend: str, *, to: str | None = None, force: bool = False,
            explicit_registry: Path | None = None,
            progress: Callable[[int], None] | None = None) -> Release:
    """Publish dist/<name>/<version>/<backend>/ to its destination, the store and the registry."""
    layout = Layout(bundle.root)
    version = resolve(bundle.version, bundle.root)
    dist = layout.dist_dir(bundle.name, version, backend)
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
            capabilities=reg.capabilities,
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
