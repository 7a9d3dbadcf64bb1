"""Registry operations, one function per verb; they return data and never print (cli.py prints).

Where lock state lives: in the discovered layer, with the rest of the dynamic state. `lock`,
`unlock` and `verify` are machine writes (a hash, a timestamp, a flag), and the curated file must
stay a reviewed, hand-written document that no command rewrites. Teams that want locks reviewed
commit the discovered file too; the snapshot shows the merged result either way. A lock on an entry
whose artifact is a store version also pins that version (`<agent>/pins/<v>`), so `kiln store
prune` never removes it, even when run without the registry.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from ..artifacts.digest import aggregate
from ..errors import CapabilityError, DriftError, FileChange, KilnError, PublishError
from ..signing import policy_from_env
from ..store import BUNDLE_DIR
from .entries import RegistryEntry, VersionLock
from .layers import Layers, RegistryFiles
from .measure import artifact_root, measure, recorded_from_store, store_location
from .signed import check_entry


@dataclass(frozen=True)
class Selection:
    """What `kiln registry select` prints: resolved paths and the served model ID."""

    name: str
    backend: str | None
    version: str | None
    served_model_id: str | None
    store: Path | None
    bundle: Path | None  # <store version>/bundle when the store holds an unpacked bundle
    local: Path | None
    s3: str | None
    capabilities: tuple[str, ...]
    roles: tuple[str, ...]
    installed: bool


@dataclass(frozen=True)
class VerifyResult:
    """A successful verify: the bytes match, `last_verified` was updated (or the hash recorded)."""

    name: str
    root: Path
    aggregate_sha256: str
    files: int
    size: int
    locked: bool
    last_verified: str
    recorded: bool  # True when no hash was known before and this verify recorded it
    not_recorded: str | None = None  # why last_verified could not be written (the verdict stands)
    signed_by: str | None = None  # the trusted key whose signature the bytes match (signed.py)


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _find(entries: dict[str, RegistryEntry], name: str, files: RegistryFiles) -> RegistryEntry:
    if name in entries:
        return entries[name]
    close = difflib.get_close_matches(name, list(entries), n=1)
    hint = f"did you mean '{close[0]}'?" if close else "see `kiln registry list --include-non-installed`"
    raise KilnError(f"{name}: no such entry in {files.directory} ({hint})")


def list_entries(role: str | None = None, include_non_installed: bool = False, *,
                 registry_dir: Path | str | None = None) -> list[RegistryEntry]:
    """Merged entries sorted by name; by default only those with local artifacts present."""
    files = RegistryFiles(registry_dir)
    layers = files.load()
    files.refresh_snapshot(layers)
    return [e for e in layers.merged.values()
            if (role is None or role in e.roles) and (include_non_installed or e.installed)]


def select(name: str, require: Iterable[str] = (), *,
           registry_dir: Path | str | None = None) -> Selection:
    """Resolve one entry; CapabilityError (exit 4) when it lacks a required capability."""
    files = RegistryFiles(registry_dir)
    entry = _find(files.load().merged, name, files)
    missing = [cap for cap in dict.fromkeys(require) if cap not in entry.capabilities]
    if missing:
        raise CapabilityError(name, missing, list(entry.capabilities))
    art = entry.artifacts
    store = Path(art.store) if art.store else None
    bundle = store / BUNDLE_DIR if store and (store / BUNDLE_DIR).is_dir() else None
    return Selection(entry.name, entry.backend, entry.version, entry.served_model_id, store,
                     bundle, Path(art.local) if art.local else None, art.s3, entry.capabilities,
                     entry.roles, entry.installed)


def verify(name: str, *, registry_dir: Path | str | None = None,
           workers: int | None = None) -> VerifyResult:
    """Re-hash the entry's artifact directory and compare with its expected hash.

    DriftError (exit 2) names every changed, missing and added file; nothing is written then.
    On success `version_lock.last_verified` is updated. An entry that never had a hash recorded
    gets one (trust on first verify; `lock --set-expected` makes that explicit).
    """
    files = RegistryFiles(registry_dir)
    entry = _find(files.load().merged, name, files)
    root = artifact_root(entry)
    expected = entry.expected_hash
    if not root.is_dir():
        raise DriftError(name, [FileChange(str(root), "missing")], expected, None)
    now = measure(entry, workers)
    changes = now.changes_from(entry.files) if expected else list(now.manifest_changes)
    if changes or (expected is not None and now.aggregate_sha256 != expected):
        raise DriftError(name, changes, expected, now.aggregate_sha256, fix=_drift_fix(name, root))
    signed = check_entry(entry, root, policy_from_env())  # REGISTRY_TRUSTED_KEYS: exit 7 if not
    signed_by = signed.key_id if signed is not None else None
    stamp = utc_now()
    lock = replace(entry.version_lock, last_verified=stamp)
    try:
        with files.editing() as (layers, work):
            current = layers.merged.get(name, entry)
            base = work.get(name) or RegistryEntry(name)
            lock = replace(current.version_lock, last_verified=stamp)
            if expected is None:
                base = replace(base, artifacts=current.artifacts, files=now.records(),
                               aggregate_sha256=now.aggregate_sha256)
            work[name] = replace(base, version_lock=lock)
    except KilnError as exc:  # the verdict stands; only its record could not be written
        return VerifyResult(name, root, now.aggregate_sha256, len(now.files), now.size,
                            lock.locked, stamp, False, not_recorded=str(exc), signed_by=signed_by)
    return VerifyResult(name, root, now.aggregate_sha256, len(now.files), now.size,
                        lock.locked, stamp, expected is None, signed_by=signed_by)


def _drift_fix(name: str, root: Path) -> str | None:
    """For a store version, the command that restores it; else DriftError's default advice."""
    where = store_location(root)
    if where is None:
        return None
    return (f"if the change is intended: `kiln registry lock {name} --set-expected`; if not, "
            f"restore it: `kiln store repair {where[1]} {where[2]}`")


def store_versions_in_use(store_root: Path, agent: str, *,
                          registry_dir: Path | str | None = None) -> set[str]:
    """Versions of `<store_root>/<agent>` that a registry entry names (its `artifacts.store`):
    `kiln store prune` keeps them, so the registry never points at a removed version."""
    versions = (Path(store_root) / agent / "versions").resolve()
    used = set()
    for entry in RegistryFiles(registry_dir).load().merged.values():
        path = Path(entry.artifacts.store) if entry.artifacts.store else None
        if path is not None and path.parent.resolve() == versions:
            used.add(path.name)
    return used


def lock(name: str, set_expected: bool = False, *, registry_dir: Path | str | None = None,
         workers: int | None = None) -> RegistryEntry:
    """Lock an entry at its recorded hash, or (`set_expected`) at the hash of its bytes now.

    `--set-expected` is how an intended change is accepted after review: it re-hashes, records
    the new file list and makes that the expected hash. Locking also pins the store version.
    """
    files = RegistryFiles(registry_dir)
    entry = _find(files.load().merged, name, files)
    now = measure(entry, workers) if set_expected else None
    if now is not None:
        if now.odd or now.manifest_changes:
            bad = [*now.manifest_changes, *(f"{p}: {k}" for p, k in sorted(now.odd.items()))]
            raise KilnError(f"{name}: cannot lock {now.root}: {'; '.join(map(str, bad))}; "
                            "restore the artifact (re-publish it) before locking")
    elif not entry.expected_hash:
        raise KilnError(f"{name}: no recorded hash to lock; run `kiln registry lock {name} "
                        "--set-expected` to hash the artifact now")
    with files.editing() as (layers, work):
        current = layers.merged.get(name, entry)
        base = work.get(name) or RegistryEntry(name, artifacts=current.artifacts)
        if now is not None:
            base = replace(base, files=now.records(), aggregate_sha256=now.aggregate_sha256)
            vlock = VersionLock(True, now.aggregate_sha256, utc_now())
        else:
            vlock = replace(current.version_lock, locked=True, expected_hash=current.expected_hash)
        work[name] = replace(base, version_lock=vlock)
        result = work[name]
    _pin(result, pin=True)
    return files.load().merged[name]


def unlock(name: str, *, registry_dir: Path | str | None = None) -> RegistryEntry:
    """Clear the lock (expected_hash is kept for the record) and unpin the store version."""
    files = RegistryFiles(registry_dir)
    entry = _find(files.load().merged, name, files)
    with files.editing() as (_layers, work):
        base = work.get(name) or RegistryEntry(name)
        work[name] = replace(base, version_lock=replace(entry.version_lock, locked=False))
    _pin(entry, pin=False)
    return files.load().merged[name]


def _pin(entry: RegistryEntry, pin: bool) -> None:
    """Pin or unpin the entry's store version when it has one that exists."""
    if not entry.artifacts.store:
        return
    where = store_location(Path(entry.artifacts.store))
    if where is None or not Path(entry.artifacts.store).is_dir():
        return
    from ..store import ModelStore

    root, agent, version = where
    store = ModelStore(root, strict=False)
    if pin:
        store.pin(agent, version, reason=f"registry lock {entry.name}")
    else:
        store.unpin(agent, version)


def record_discovered(entry: RegistryEntry, *, registry_dir: Path | str | None = None,
                      workers: int | None = None) -> RegistryEntry:
    """Record (or replace) an entry in the discovered layer, as a build or publish saw it.

    Without a file list the artifact directory is measured: a store version from its sealed
    manifest (just written, not re-read), a dist directory by hashing. A locked entry is not
    replaced by different bytes: unlock it, or accept them with `lock --set-expected`.
    Static fields set in the curated layer still win in the merged view.
    """
    if not entry.files and entry.artifacts.root() is not None:
        root = artifact_root(entry)
        known = recorded_from_store(root) if entry.artifacts.store else None
        if known is None:
            now = measure(entry, workers)
            known = now.records(), now.aggregate_sha256
        entry = replace(entry, files=known[0], aggregate_sha256=known[1])
    elif entry.files and entry.aggregate_sha256 is None:
        entry = replace(entry, aggregate_sha256=aggregate((f.path, f.sha256) for f in entry.files))
    files = RegistryFiles(registry_dir)
    with files.editing() as (_layers, work):
        old = work.get(entry.name)
        if old is not None and old.version_lock.locked:
            # publish refuses this before its first upload (`refuse_locked`, exit 2); here it is
            # the backstop for a lock set while a publish was under way: content went out, so
            # it is a failed publish (exit 1)
            if entry.aggregate_sha256 != old.version_lock.expected_hash:
                raise PublishError(
                    f"{entry.name}: locked at {old.version_lock.expected_hash}, refusing to "
                    f"record {entry.aggregate_sha256}; `kiln registry unlock {entry.name}` first, "
                    "or publish under another name")
            entry = replace(entry, version_lock=old.version_lock)
        elif old is not None:
            same = old.aggregate_sha256 == entry.aggregate_sha256
            entry = replace(entry, version_lock=replace(
                old.version_lock, last_verified=old.version_lock.last_verified if same else None))
        work[entry.name] = entry
    return files.load().merged[entry.name]


def locked_entries(names: Iterable[str], *,
                   registry_dir: Path | str | None = None) -> dict[str, RegistryEntry]:
    """Those of `names` whose discovered entry is locked (lock state lives only there)."""
    discovered = RegistryFiles(registry_dir).load().discovered
    return {n: discovered[n] for n in names
            if n in discovered and discovered[n].version_lock.locked}


def refuse_locked(locked: RegistryEntry, would_record: str | None, version: str | None = None) -> None:
    """DriftError (exit 2) unless `would_record` is the hash `locked` is locked at.

    A locked entry names bytes that were reviewed: publishing other bytes under it would re-point
    it, so the publish is refused, and (called before the first upload) nothing of it is sent."""
    expected = locked.version_lock.expected_hash
    if would_record == expected:
        return
    what = f"{version} " if version else ""
    raise DriftError(
        locked.name, [FileChange(locked.name, "changed", expected, would_record)], expected,
        would_record, fix=f"{locked.name} is locked at {expected}: publishing {what}would replace "
        f"it with other bytes, so nothing was published; `kiln registry unlock {locked.name}` "
        "first to publish it on purpose, or publish under another name or backend")


def regenerate(registry_dir: Path | str | None = None) -> Path:
    """Rewrite the snapshot from the two source layers; returns its path."""
    files = RegistryFiles(registry_dir)
    with files.editing():
        pass
    return files.snapshot


def layers(registry_dir: Path | str | None = None) -> Layers:
    """Both layers as loaded (for `kiln registry list --json` style dumps and tests)."""
    return RegistryFiles(registry_dir).load()
