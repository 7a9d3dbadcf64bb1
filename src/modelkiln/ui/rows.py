"""The registry as the pages list it: one row per entry of either layer, with its drift badge, and
an entry's versions in the model store.

The drift badge must be cheap enough for every page view, so it does not re-hash: it shows the
last Verify this server ran for the entry (drift or ok), and otherwise compares each recorded
file's presence and size with the disk (a missing, added or resized file is drift before anyone
presses Verify). A same-size edit is found by Verify, which re-reads every byte.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import KilnError
from ..registry import RegistryEntry, layers
from ..registry.measure import store_location
from ..store import MANIFEST, StoreReader, VersionInfo, scan
from .bundle import manifest_of, published_bytes, signature_status


@dataclass(frozen=True)
class Row:
    """One registry entry on the registry page."""

    entry: RegistryEntry
    curated: bool
    discovered: bool
    drift: str | None  # why the badge shows, or None
    installed: bool
    task: str | None = None  # the bundle's task, from its manifest's serving signature
    signature: str = "unknown"

    @property
    def layer(self) -> str:
        return " + ".join(n for n, on in (("curated", self.curated),
                                          ("discovered", self.discovered)) if on)


def stat_drift(entry: RegistryEntry) -> str | None:
    """Missing, added or resized files against the recorded list (no bytes read), or None."""
    root = entry.artifacts.root()
    if root is None or not entry.files:
        return None
    if not root.is_dir():
        return f"{root} is missing"
    try:
        tree = scan(root, exclude=frozenset({MANIFEST}) if entry.artifacts.store else frozenset())
    except OSError as exc:
        return f"{root}: {exc.strerror}"
    recorded = {f.path: f.size for f in entry.files}
    for path, size in sorted(recorded.items()):
        st = tree.files.get(path)
        if st is None:
            return f"missing {path}"
        if st.st_size != size:
            return f"resized {path}: {size} -> {st.st_size} bytes"
    extra = sorted(set(tree.files) - set(recorded)) + sorted(tree.odd)
    return f"added {extra[0]}" if extra else None


def rows(registry_dir: str | None, verdicts: dict[str, str | None]) -> list[Row]:
    """Every entry of both layers, sorted by name. `verdicts` holds this server's last Verify
    per entry (a drift summary, or None for ok); it wins over the stat check."""
    both = layers(registry_dir)
    out = []
    for name, entry in both.merged.items():
        drift = verdicts[name] if name in verdicts else stat_drift(entry)
        manifest, _where = manifest_of(entry)
        sig = manifest.get("signature") if manifest else None
        task = sig.get("task") if isinstance(sig, dict) else None
        out.append(Row(entry, name in both.curated, name in both.discovered, drift,
                       entry.installed, task if isinstance(task, str) else None,
                       signature_status(entry, published_bytes(entry))))
    return out


def matches(row: Row, role: str, capability: str) -> bool:
    """The registry page's filter (the runbook's `list --role`, and the same for capabilities)."""
    return ((not role or role in row.entry.roles)
            and (not capability or capability in row.entry.capabilities))


@dataclass(frozen=True)
class StoreVersions:
    """The agent's versions in the store, and which one this entry names."""

    root: Path
    agent: str
    versions: tuple[VersionInfo, ...]
    entry_version: str


def store_versions(entry: RegistryEntry) -> StoreVersions | None:
    """The entry's agent in its store (None when the entry names no store version)."""
    where = store_location(Path(entry.artifacts.store)) if entry.artifacts.store else None
    if where is None:
        return None
    root, agent, version = where
    try:
        found = tuple(StoreReader(root, strict=False).list_versions(agent))
    except (OSError, KilnError):  # a damaged store still shows the rest of the page
        found = ()
    return StoreVersions(root, agent, found, version)


def version_path(entry: RegistryEntry, version: str) -> Path | None:
    """The store directory of another version of the entry's agent (for compare)."""
    listed = store_versions(entry)
    if listed is None or version not in {v.version for v in listed.versions}:
        return None
    path = listed.root / listed.agent / "versions" / version
    return path if os.path.isdir(path) else None
