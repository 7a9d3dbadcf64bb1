"""Signing a built bundle: `bundle.sig` and `provenance.sigstore.json` beside its manifest.

`sign_dist` writes both files into `dist/<name>/<version>/<backend>/`; publishers then send them
with `sidecars()` after the tarball and before the manifest, the commit point, so a reader that
sees a manifest finds its signature too. Signing is deterministic, so signing an unchanged bundle
again with the same key rewrites nothing, and a re-publish of it sends nothing.

A dist directory whose signature files were made for other bytes (a rebuild after signing) is
refused by `sidecars()` rather than published with a signature that can only fail.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..artifacts import manifest as mf
from ..artifacts import names
from ..artifacts.atomic import write_bytes
from ..artifacts.digest import sha256_bytes
from ..errors import KilnError, SignatureError
from . import envelope, provenance, statement
from .keys import SigningKey, load_signing_key

SIGNATURE_MEDIA_TYPE = envelope.BUNDLE_MEDIA_TYPE  # both files are Sigstore bundles
SIDECARS = (names.SIGNATURE, names.PROVENANCE)


@dataclass(frozen=True)
class Sidecar:
    """A small signed file published beside the tarball, before the manifest."""

    name: str
    data: bytes
    media_type: str


@dataclass(frozen=True)
class SignResult:
    """What `sign_dist` did: the key used and which files it (re)wrote."""

    directory: Path
    key_id: str
    written: tuple[str, ...]
    record: statement.SignedBundle


def sign_manifest(manifest_bytes: bytes, key: SigningKey) -> bytes:
    """The `bundle.sig` bytes for a published manifest (model-signing format, see statement.py)."""
    record = statement.from_manifest(_load(manifest_bytes), manifest_bytes)
    return _seal(statement.encode(record), key)


def sign_provenance(manifest_bytes: bytes, key: SigningKey, root: Path | None,
                    env: Mapping[str, str] | None = None) -> bytes:
    """The `provenance.sigstore.json` bytes: SLSA v1 provenance, signed as a DSSE envelope."""
    manifest = _load(manifest_bytes)
    record = statement.from_manifest(manifest, manifest_bytes)
    source = provenance.git_source(root) if root is not None else None
    doc = provenance.statement(manifest, record, source, env)
    return _seal(json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n", key)


def sign_dist(dist_dir: Path, key: SigningKey | None = None, *, root: Path | None = None,
              env: Mapping[str, str] | None = None) -> SignResult:
    """Sign `dist_dir/manifest.json` into `bundle.sig` and `provenance.sigstore.json` (atomic).

    `key` defaults to the one KILN_SIGNING_KEY[_FILE] names; `root` is the project whose git
    HEAD goes into the provenance (None: no source revision).
    """
    key = key if key is not None else load_signing_key(env)
    if key is None:
        raise KilnError("no signing key: set KILN_SIGNING_KEY_FILE to a key `kiln keygen` made "
                        "(or KILN_SIGNING_KEY to its PEM text)")
    manifest_path = dist_dir / names.MANIFEST
    try:
        manifest_bytes = manifest_path.read_bytes()
    except OSError as exc:
        raise KilnError(f"{manifest_path}: cannot read ({exc.strerror}); build the bundle "
                        "first (`kiln build`)") from None
    outputs = {names.SIGNATURE: sign_manifest(manifest_bytes, key),
               names.PROVENANCE: sign_provenance(manifest_bytes, key, root, env)}
    written = []
    for name, data in outputs.items():
        path = dist_dir / name
        if not path.is_file() or path.read_bytes() != data:
            write_bytes(path, data)
            written.append(name)
    record = statement.from_manifest(_load(manifest_bytes), manifest_bytes)
    return SignResult(dist_dir, key.public.key_id, tuple(written), record)


def sign_if_configured(dist_dir: Path, root: Path | None,
                       env: Mapping[str, str] | None = None) -> SignResult | None:
    """Sign `dist_dir` when KILN_SIGNING_KEY[_FILE] names a key (publish calls this first);
    None, and nothing written, when no key is configured."""
    key = load_signing_key(env)
    return sign_dist(dist_dir, key, root=root, env=env) if key is not None else None


def sidecars(dist_dir: Path, manifest_bytes: bytes) -> tuple[Sidecar, ...]:
    """The signature files to publish before `manifest_bytes`; () for an unsigned bundle.

    Each must have been made for exactly these manifest bytes (checked without keys: the signed
    statement's manifest digest), so a stale signature is never published.
    """
    out = []
    digest = sha256_bytes(manifest_bytes)
    for name in SIDECARS:
        path = dist_dir / name
        if not path.is_file():
            continue
        data = path.read_bytes()
        if _signed_manifest_digest(data, str(path)) != digest:
            raise SignatureError(f"{path}: signed for other bytes than {dist_dir / names.MANIFEST} "
                                 "(the bundle was rebuilt after signing); sign it again with "
                                 f"`kiln sign {dist_dir}` before publishing")
        out.append(Sidecar(name, data, SIGNATURE_MEDIA_TYPE))
    names_found = {s.name for s in out}
    if names_found and names.SIGNATURE not in names_found:
        raise SignatureError(f"{dist_dir}: {names.PROVENANCE} without {names.SIGNATURE}; sign "
                             f"it again with `kiln sign {dist_dir}`")
    return tuple(out)


def oci_signature(dist_dir: Path) -> tuple[bytes, str] | None:
    """The signature to attach to the bundle's OCI artifact: (bytes, media type), or None.

    Attach it as a referrer whose artifactType is the media type (or, on registries without the
    referrers API, under the `sha256-<manifest digest>.sig` tag).
    """
    path = dist_dir / names.SIGNATURE
    if not path.is_file():
        return None
    return path.read_bytes(), SIGNATURE_MEDIA_TYPE


def _seal(payload: bytes, key: SigningKey) -> bytes:
    signature = key.sign(envelope.pae(envelope.PAYLOAD_TYPE, payload))
    return envelope.wrap(payload, signature, key.public.key_id)


def _load(manifest_bytes: bytes) -> mf.PublishedManifest:
    return mf.loads_published(manifest_bytes, names.MANIFEST)


def _signed_manifest_digest(data: bytes, origin: str) -> str | None:
    """The manifest digest a signature file's statement names (unverified: a staleness check)."""
    payload = envelope.unwrap(data, origin).payload
    doc = envelope.strict_json(payload, origin, "signed statement")
    if not isinstance(doc, dict):
        return None
    predicate = doc.get("predicate")
    if doc.get("predicateType") == statement.MODEL_PREDICATE and isinstance(predicate, dict):
        ours = predicate.get("modelkiln")
        return ours.get("manifest_sha256") if isinstance(ours, dict) else None
    for subject in doc.get("subject") or []:
        if isinstance(subject, dict) and subject.get("name") == names.MANIFEST:
            digest = subject.get("digest")
            return digest.get("sha256") if isinstance(digest, dict) else None
    return None
