"""Verifying a bundle's signature offline, before anything it describes is trusted.

Order of checks, each refusal one `SignatureError` line (exit 7) naming what is wrong and the fix:

1. the signature file parses as a Sigstore bundle with one DSSE signature, under the size bound;
2. its key hint names a trusted key (else: "signed by key X, which is not trusted"), and the
   ECDSA signature over DSSE's PAE of the payload verifies with that key;
3. the signed statement is ours and self-consistent (subject digest = digest of its resources);
4. the signed name and version are the ones expected (else: a replayed signature of another
   version), and the published manifest is byte-for-byte the one that was signed;
5. callers then hold a `SignedBundle` and check the bytes they fetch against it
   (`check_archive`, `check_files`): a changed byte is a digest mismatch against the signature.

Nothing here opens a socket: trust is the list of public keys the caller passes.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..artifacts import manifest as mf
from ..artifacts import names
from ..artifacts.digest import sha256_bytes, sha256_file
from ..errors import FileChange, SignatureError
from . import envelope, provenance, statement
from .keys import TRUSTED_ENV, PublicKey, load_trusted_keys
from .statement import SignedBundle

NAME_ENV = "MODEL_BUNDLE_NAME"
VERSION_ENV = "MODEL_BUNDLE_VERSION"


def trusted_keys_from_env(env: Mapping[str, str] | None = None) -> tuple[PublicKey, ...]:
    """The keys REGISTRY_TRUSTED_KEYS names; empty only when it is unset (signatures not
    required). Set to anything, even "" or ":", it must name at least one usable key, or
    `load_trusted_keys` refuses it (exit 7): a typo, an empty directory or a blank template
    value must not turn signature checking off."""
    env = os.environ if env is None else env
    value = env.get(TRUSTED_ENV)
    return () if value is None else load_trusted_keys(value)


def open_envelope(data: bytes, trusted: Sequence[PublicKey], origin: str
                  ) -> tuple[bytes, PublicKey]:
    """Check a signature file against the trusted keys; return the signed payload and the key."""
    if not trusted:
        raise SignatureError(f"{origin}: no trusted keys to verify with; set {TRUSTED_ENV} to "
                             "the signer's public key file(s)")
    env = envelope.unwrap(data, origin)
    if env.key_hint:
        candidates = [k for k in trusted if k.key_id == env.key_hint]
        if not candidates:
            known = ", ".join(f"{k.key_id[:16]} ({k.origin})" for k in trusted)
            raise SignatureError(f"{origin}: signed by key {env.key_hint[:16]}, which is not "
                                 f"trusted (trusted: {known}); add the signer's public key to "
                                 f"{TRUSTED_ENV} if you trust it, or re-sign with a trusted key")
    else:  # signers may leave the hint out; then any trusted key may match
        candidates = list(trusted)
    message = envelope.pae(env.payload_type, env.payload)
    for key in candidates:
        if key.verify(env.signature, message):
            return env.payload, key
    who = f"key {candidates[0].key_id[:16]}" if env.key_hint else "any trusted key"
    raise SignatureError(f"{origin}: the signature does not verify with {who}: the signed "
                         "statement was altered or the signature forged; do not use this "
                         "bundle, re-publish it from a trusted build")


def verify_bundle(manifest_bytes: bytes, signature_bytes: bytes,
                  trusted_keys: Sequence[PublicKey], expected_name: str | None = None,
                  expected_version: str | None = None, *,
                  origin: str = names.SIGNATURE,
                  manifest_origin: str = names.MANIFEST) -> SignedBundle:
    """Verify a published manifest's signature; return what the signature vouches for.

    `expected_name` / `expected_version`, when given, are what the caller is about to serve (a
    registry entry, a pinned version); the signed ones must equal them. Whether given or not, the
    signed name/version/backend must equal the manifest's and the manifest must be the signed one.
    """
    return _verify(manifest_bytes, signature_bytes, trusted_keys, expected_name, expected_version,
                   origin, manifest_origin, own=False)


def verify_bundle_manifest(manifest_bytes: bytes, signature_bytes: bytes,
                           trusted_keys: Sequence[PublicKey], expected_name: str | None = None,
                           expected_version: str | None = None, *, origin: str = names.SIGNATURE,
                           manifest_origin: str = names.MANIFEST) -> SignedBundle:
    """Like `verify_bundle`, for a bundle's own manifest.json (no `archive` entry): what an OCI
    artifact's manifest layer or an unpacked bundle holds, where no published manifest exists."""
    return _verify(manifest_bytes, signature_bytes, trusted_keys, expected_name, expected_version,
                   origin, manifest_origin, own=True)


def _verify(manifest_bytes: bytes, signature_bytes: bytes, trusted_keys: Sequence[PublicKey],
            expected_name: str | None, expected_version: str | None, origin: str,
            manifest_origin: str, *, own: bool) -> SignedBundle:
    """Both checks: the statement is signed by a trusted key and names this bundle, and the
    manifest's bytes are the signed ones (the published manifest's digest, or with `own` the
    bundle's own manifest's)."""
    record = _open_statement(signature_bytes, trusted_keys, origin)
    manifest = mf.loads(manifest_bytes, manifest_origin)
    _same_bundle(record, manifest, expected_name, expected_version, origin)
    actual = sha256_bytes(manifest_bytes)
    signed = record.bundle_manifest_sha256 if own else record.manifest_sha256
    if actual != signed:
        label, what = (manifest_origin, "bundle manifest") if own else (names.MANIFEST, "one")
        raise SignatureError(f"{origin}: {label} (sha256 {actual[:16]}) is not the signed {what} "
                             f"({signed[:16]}): {_manifest_diff(manifest, record)}; do not use "
                             "this bundle, re-publish it from a trusted build")
    return record


def _open_statement(signature_bytes: bytes, trusted_keys: Sequence[PublicKey],
                    origin: str) -> SignedBundle:
    payload, key = open_envelope(signature_bytes, trusted_keys, origin)
    record = statement.decode(envelope.strict_json(payload, origin, "signed statement"), origin)
    return dataclasses.replace(record, key_id=key.key_id)


def _same_bundle(record: SignedBundle, manifest: mf.BundleManifest, expected_name: str | None,
                 expected_version: str | None, origin: str) -> None:
    """The signed name/version/backend must be the expected ones and the manifest's.

    The caller's expectation (`--version`, the version a host pins) is not a fact about the
    bundle, so its refusal says what was asked for rather than what "this" is."""
    asked = (("name", expected_name), ("version", expected_version))
    for field, expected in asked:
        if expected is not None and getattr(record, field) != expected:
            raise SignatureError(f"{origin}: the signature is for {record.label}, but {field} "
                                 f"{expected!r} was asked for: another bundle or version (or a "
                                 "signature replayed from one) is in its place; refuse it, or "
                                 f"ask for the {field} that was signed")
    says = (("name", manifest["name"]), ("version", manifest["version"]),
            ("backend", manifest["backend"]))
    for field, value in says:
        if getattr(record, field) != value:
            raise SignatureError(f"{origin}: the signature is for {record.label}, but the manifest "
                                 f"says {field} {value!r}: a signature replayed from another "
                                 "bundle or version; refuse it, publish this version signed")


def check_archive(record: SignedBundle, size: int, sha256: str, origin: str) -> None:
    """Refuse a tarball whose size or sha256 differs from the signed ones."""
    if size != record.archive_size or sha256 != record.archive_sha256:
        raise SignatureError(f"{origin}: size {size} / sha256 {sha256[:16] or 'unread'} differ "
                             "from the signed "
                             f"{record.archive_size} / {record.archive_sha256[:16]}; a changed "
                             "byte, do not use this bundle, re-publish it")


def file_changes(record: SignedBundle, root: Path) -> list[FileChange]:
    """Re-hash an unpacked bundle under `root` against the signed file list (extra files count)."""
    files: list[mf.FileEntry] = [{"path": p, "size": 0, "sha256": d} for p, d in record.files]
    manifest = mf.build(name=record.name, version=record.version, backend=record.backend,
                        files=files, inputs={}, spec_digest="", tools={})
    changes = mf.compare_tree(root, manifest)  # sizes unused: it compares digests
    sig = root / names.SIGNATURE
    changes = [c for c in changes if not (c.kind == "added" and root / c.path == sig)]
    own = root / names.MANIFEST  # the bundle's own manifest: signed by its digest
    if own.is_file() and not own.is_symlink():
        digest = sha256_file(own)
        if digest != record.bundle_manifest_sha256:
            changes.append(FileChange(names.MANIFEST, "changed", record.bundle_manifest_sha256,
                                      digest))
    else:
        changes.append(FileChange(names.MANIFEST, "missing"))
    return sorted(changes, key=lambda c: c.path)


def check_files(record: SignedBundle, root: Path, origin: str) -> None:
    """Refuse an unpacked bundle whose files differ from what was signed (one line, first diff)."""
    changes = file_changes(record, root)
    if changes:
        first = changes[0]
        more = f" (and {len(changes) - 1} more)" if len(changes) > 1 else ""
        raise SignatureError(f"{origin}: {first}{more} against the signature of {record.label}; "
                             "a changed byte, restore the files from a verified copy")


def verify_provenance(data: bytes, trusted_keys: Sequence[PublicKey], record: SignedBundle,
                      origin: str) -> provenance.Provenance:
    """Verify a signed provenance statement and that it describes `record`'s bytes."""
    payload, _ = open_envelope(data, trusted_keys, origin)
    return provenance.decode(envelope.strict_json(payload, origin, "provenance"), record, origin)


def _manifest_diff(manifest: Mapping[str, object], record: SignedBundle) -> str:
    """The first way a manifest departs from the signed record, for the refusal line."""
    archive = manifest.get("archive")
    if isinstance(archive, dict) and archive.get("sha256") != record.archive_sha256:
        return f"its archive sha256 {str(archive.get('sha256'))[:16]} is not the signed " \
               f"{record.archive_sha256[:16]}"
    files = manifest.get("files")
    listed: dict[str, object] = {str(f.get("path")): f.get("sha256") for f in files
                                 if isinstance(f, dict)} if isinstance(files, list) else {}
    for path, digest in record.files:
        if listed.get(path) != digest:
            return f"{path} is listed with sha256 {str(listed.get(path))[:16]}, signed " \
                   f"{digest[:16]}"
    extra = sorted(set(listed) - {p for p, _ in record.files})
    if extra:
        return f"it lists {extra[0]}, which was not signed"
    return "other fields were changed"


@dataclass(frozen=True)
class Policy:
    """What a reader requires: trusted keys (none: signatures are not checked) and, optionally,
    the name and version it means to serve (a signature for any other is refused)."""

    trusted: tuple[PublicKey, ...] = ()
    expected_name: str | None = None
    expected_version: str | None = None

    @property
    def required(self) -> bool:
        return bool(self.trusted)


def policy_from_env(env: Mapping[str, str] | None = None) -> Policy:
    """REGISTRY_TRUSTED_KEYS, MODEL_BUNDLE_NAME and MODEL_BUNDLE_VERSION, as a Policy."""
    env = os.environ if env is None else env
    return Policy(trusted_keys_from_env(env),
                  (env.get(NAME_ENV) or "").strip() or None,
                  (env.get(VERSION_ENV) or "").strip() or None)


def check_published(manifest_bytes: bytes, signature_bytes: bytes | None, policy: Policy, *,
                    origin: str, manifest_origin: str = names.MANIFEST) -> SignedBundle | None:
    """The bootstrap's one call, made before any download or extraction.

    No trusted keys: nothing is required, returns None. Trusted keys and no signature: refused.
    Otherwise `verify_bundle`, and the caller checks the tarball with `check_archive`.
    """
    if not policy.required:
        return None
    if signature_bytes is None:
        raise SignatureError(f"{origin}: not found, and {TRUSTED_ENV} requires every bundle to be "
                             "signed; publish it with a signing key (KILN_SIGNING_KEY_FILE), or "
                             f"unset {TRUSTED_ENV} to accept unsigned bundles")
    return verify_bundle(manifest_bytes, signature_bytes, policy.trusted,
                         policy.expected_name, policy.expected_version, origin=origin,
                         manifest_origin=manifest_origin)
