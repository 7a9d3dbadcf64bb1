"""What an entry's bundle says about itself: its manifest, thresholds and their metrics, its
signature and provenance, read from the bytes the registry entry points at.

Where from: a store version keeps the unpacked bundle (`<version>/bundle/`), so its small files are
read directly; a dist directory holds `manifest.json` beside `bundle.tar.gz`, and the thresholds
are members of the tarball (read once per tarball sha256 and kept, since a member near the end
means inflating the whole archive). Every read is bounded and takes regular files only: these are
files from a build or a publisher, and a page must never hang on a FIFO or load a huge file.
Nothing here decides trust: Verify (the registry's verify) does that.
"""
from __future__ import annotations

import base64
import functools
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import names
from ..artifacts.statefile import read_regular
from ..errors import KilnError
from ..registry import RegistryEntry
from ..store import BUNDLE_DIR, read_manifest
from ..transport.schemes import local_path_of
from ..transport.uris import sibling

SMALL = 16 << 20  # a manifest, thresholds or signature file is KiB; anything over is not one
Json = dict[str, Any]


@dataclass(frozen=True)
class Metric:
    """One label's threshold and the figures the thresholds stage measured for it."""

    label: str
    threshold: float | None
    source: str | None = None
    f1: float | None = None
    precision: float | None = None
    recall: float | None = None
    support: int | None = None


@dataclass(frozen=True)
class BundleView:
    """Everything the entry and compare pages show about one bundle (None: not found)."""

    where: str
    manifest: Json | None = None
    metrics: tuple[Metric, ...] = ()
    signature: str = "unknown"
    provenance: Json = field(default_factory=dict)


def _json(data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def _dict(value: Any) -> Json | None:
    return value if isinstance(value, dict) else None


@functools.lru_cache(maxsize=32)
def _tar_members(archive: str, size: int, mtime_ns: int) -> dict[str, bytes]:
    """The small JSON members of a bundle tarball (keyed by its stat, so a new one is re-read)."""
    wanted = {names.THRESHOLDS, names.THRESHOLD_METRICS, names.LABEL_ORDER, names.MANIFEST}
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if member.name in wanted and member.isreg() and member.size <= SMALL:
                    handle = tar.extractfile(member)
                    if handle is not None:
                        out[member.name] = handle.read()
                if len(out) == len(wanted):
                    break
    except (OSError, tarfile.TarError, EOFError):
        return out
    return out


def published_dir(entry: RegistryEntry) -> Path | None:
    """Where the published manifest (and signature, provenance) lie on this machine: the dist
    directory, else the directory of a file:// publish."""
    if entry.artifacts.local:
        return Path(entry.artifacts.local)
    uri = entry.artifacts.s3
    if not uri:
        return None
    try:  # None where the published files are not on this machine (s3://, a plug-in's scheme)
        path = local_path_of(sibling(uri, names.ARCHIVE))
    except KilnError:
        return None
    return path.parent if path is not None else None


def _member(entry: RegistryEntry, name: str) -> bytes | None:
    """A small file of the bundle: from the store's unpacked copy, else the dist tarball."""
    if entry.artifacts.store:
        return read_regular(Path(entry.artifacts.store) / BUNDLE_DIR / name, SMALL)
    if entry.artifacts.local:
        archive = Path(entry.artifacts.local) / names.ARCHIVE
        try:
            st = archive.stat()
        except OSError:
            return None
        return _tar_members(str(archive), st.st_size, st.st_mtime_ns).get(name)
    return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def metrics(thresholds: Any, figures: Any, order: Any) -> tuple[Metric, ...]:
    """Per-label rows in label order (then any other label), from the stage's two files."""
    thresholds = _dict(thresholds) or {}
    figures = _dict(figures) or {}
    labels = [x for x in order if isinstance(x, str)] if isinstance(order, list) else []
    labels += sorted(k for k in (*thresholds, *figures) if isinstance(k, str) and k not in labels)
    rows = []
    for label in dict.fromkeys(labels):
        fig = _dict(figures.get(label)) or {}
        support = fig.get("support")
        rows.append(Metric(label, _number(thresholds.get(label)),
                           fig.get("source") if isinstance(fig.get("source"), str) else None,
                           _number(fig.get("f1")), _number(fig.get("precision")),
                           _number(fig.get("recall")),
                           support if isinstance(support, int) and not isinstance(support, bool)
                           else None))
    return tuple(rows)


def manifest_of(entry: RegistryEntry) -> tuple[Json | None, str]:
    """The published manifest (dist), else the bundle manifest inside the store version."""
    published = published_dir(entry)
    if published is not None:
        path = published / names.MANIFEST
        found = _dict(_json(read_regular(path, SMALL)))
        if found is not None:
            return found, str(path)
    if entry.artifacts.store:
        version = Path(entry.artifacts.store)
        path = version / BUNDLE_DIR / names.MANIFEST
        return _stored_files(_dict(_json(read_regular(path, SMALL))), version), str(path)
    return None, "no local copy (store or dist) on this machine"


def _stored_files(manifest: Json | None, version: Path) -> Json | None:
    """A store version's bundle manifest with its file list taken from the store's sealed
    manifest: the sizes and digests the store recorded for what it holds."""
    try:
        sealed = read_manifest(version)
    except KilnError:
        return manifest
    prefix = f"{BUNDLE_DIR}/"
    files = [{"path": p[len(prefix):], "size": size, "sha256": digest}
             for p, (size, digest) in sorted(sealed.files.items())
             if p.startswith(prefix) and p != prefix + names.MANIFEST]
    return {**(manifest or {}), "files": files}


def signature_status(entry: RegistryEntry, manifest_bytes: bytes | None) -> str:
    """Signed or not, and by whom when REGISTRY_TRUSTED_KEYS lets us check the signature."""
    published = published_dir(entry)
    if published is None:
        return "unknown (not published to this machine)"
    sig = read_regular(published / names.SIGNATURE, SMALL)
    if sig is None:
        return "unsigned"
    from ..signing import check_published, policy_from_env

    try:
        policy = policy_from_env()
        if not policy.required or manifest_bytes is None:
            return "signed (not checked: REGISTRY_TRUSTED_KEYS is unset)"
        record = check_published(manifest_bytes, sig, policy, origin=names.SIGNATURE)
    except KilnError as exc:
        return f"refused: {exc}"
    return f"signed by {record.key_id[:16]} (checked)" if record is not None else "signed"


def provenance(entry: RegistryEntry) -> Json:
    """Builder, source commit and invocation as the signed provenance states them (unverified
    here; Verify checks the signature when REGISTRY_TRUSTED_KEYS is set)."""
    published = published_dir(entry)
    if published is None:
        return {}
    doc = _dict(_json(read_regular(published / names.PROVENANCE, SMALL)))
    env = _dict(doc.get("dsseEnvelope")) if doc else None
    try:
        statement = _dict(json.loads(base64.b64decode(str(env.get("payload")))) if env else None)
    except (ValueError, RecursionError):
        statement = None
    predicate = _dict((statement or {}).get("predicate")) or {}
    run = _dict(predicate.get("runDetails")) or {}
    build = _dict(predicate.get("buildDefinition")) or {}
    out: Json = {}
    builder = _dict(run.get("builder")) or {}
    if isinstance(builder.get("id"), str):
        out["builder"] = builder["id"]
    invocation = (_dict(run.get("metadata")) or {}).get("invocationId")
    if isinstance(invocation, str):
        out["invocation"] = invocation
    deps = build.get("resolvedDependencies")
    for dep in deps if isinstance(deps, list) else []:
        if not isinstance(dep, dict):
            continue
        digest = _dict(dep.get("digest")) or {}
        if isinstance(digest.get("gitCommit"), str):
            out["commit"] = digest["gitCommit"]
            out["source"] = str(dep.get("uri", ""))
    return out


def published_bytes(entry: RegistryEntry) -> bytes | None:
    """The published manifest's bytes (what a signature covers), when the dist dir is here."""
    published = published_dir(entry)
    return None if published is None else read_regular(published / names.MANIFEST, SMALL)


def view(entry: RegistryEntry) -> BundleView:
    """The bundle the entry points at, as the pages show it."""
    manifest, where = manifest_of(entry)
    raw = published_bytes(entry)
    rows = metrics(_json(_member(entry, names.THRESHOLDS)),
                   _json(_member(entry, names.THRESHOLD_METRICS)),
                   _json(_member(entry, names.LABEL_ORDER)))
    return BundleView(where, manifest, rows, signature_status(entry, raw), provenance(entry))
