"""Release one built bundle everywhere its spec says: S3 / file://, the model store, the registry.

Order follows DESIGN §1: content first (the remote copy, then the store version), and the
registry's discovered layer is written last, so the registry never points at bytes that are not
published. Every step is idempotent: the same bytes again upload nothing and change nothing.

Destinations, in precedence order: an explicit `to` (`kiln publish --to`, `doit publish to=...`,
or $KILN_PUBLISH_URI), the spec's `publish.s3`, then the embedded default
`file://<project>/published/{name}/{version}/{backend}/`. `to=local` names the embedded default
explicitly, so the README's main job runs with no credentials. The store root is the spec's
`publish.store.root` with ${VARS} expanded; an unset variable falls back to
`<project>/model-store`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..model.bundle import Bundle
from ..model.version import resolve
from ..stages.base import Layout
from . import PublishResult, publish_bundle, render_destination
from .store_publish import StoreResult, publish_to_store

LOCAL = "local"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Release:
    """What publishing one backend of one bundle did."""

    name: str
    backend: str
    version: str
    remote: PublishResult
    store: StoreResult | None
    registry_name: str | None


def default_destination(root: Path) -> str:
    return (root / "published").as_uri() + "/{name}/{version}/{backend}/"


def destination_template(bundle: Bundle, to: str | None = None) -> str:
    chosen = to or os.environ.get("KILN_PUBLISH_URI") or None
    if chosen == LOCAL:
        return default_destination(bundle.root)
    return chosen or bundle.publish.s3 or default_destination(bundle.root)


def store_root(bundle: Bundle) -> Path | None:
    """The spec's store root with ${VARS} expanded; unset variables mean the embedded default."""
    target = bundle.publish.store
    if target is None:
        return None
    missing = [v for v in _VAR.findall(target.root) if not os.environ.get(v)]
    if missing:
        return bundle.root / "model-store"
    return Path(_VAR.sub(lambda m: os.environ[m.group(1)], target.root)).expanduser()


def release(bundle: Bundle, backend: str, *, to: str | None = None, force: bool = False,
            registry_dir: Path | None = None,
            progress: Callable[[int], None] | None = None) -> Release:
    """Publish dist/<name>/<version>/<backend>/ to its destination, the store and the registry."""
    from ..graph.state import stat_cache
    from ..registry import Artifacts, RegistryEntry, record_discovered

    layout = Layout(bundle.root)
    version = resolve(bundle.version, bundle.root)
    dist = layout.dist_dir(bundle.name, version, backend)
    target = render_destination(destination_template(bundle, to), name=bundle.name,
                                version=version, backend=backend)
    remote = publish_bundle(dist, target, force=force, progress=progress,
                            cache=stat_cache(layout.state))
    stored = None
    root = store_root(bundle)
    if root is not None and bundle.publish.store is not None:
        agent = bundle.publish.store.agent.replace("{backend}", backend)
        stored = publish_to_store(dist, root, agent, version, dict(bundle.metadata))
    reg = bundle.registry
    entry = RegistryEntry(
        name=f"{bundle.name}-{backend}", backend=backend, description=bundle.description or None,
        roles=reg.roles, capabilities=reg.capabilities,
        served_model_id=reg.served_id or f"{bundle.name}:{version}",
        metadata=dict(bundle.metadata), version=version,
        artifacts=Artifacts(store=str(stored.path) if stored else None, s3=remote.archive_uri,
                            local=None if stored else str(dist)))
    where = registry_dir or os.environ.get("KILN_REGISTRY_DIR") or bundle.root / "configs"
    recorded = record_discovered(entry, registry_dir=where)
    return Release(bundle.name, backend, version, remote, stored, recorded.name)
