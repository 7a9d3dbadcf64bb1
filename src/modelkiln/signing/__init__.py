"""Signed bundles and build provenance, verified offline.

Publishers sign each bundle's published manifest with a local ECDSA P-256 key (OpenSSF
model-signing format: a DSSE envelope in a Sigstore bundle, `bundle.sig`) and ship signed SLSA v1
provenance beside it (`provenance.sigstore.json`). Readers verify against a list of trusted
public keys, with no network: `check_published` before downloading, `check_archive` /
`check_files` on the bytes. Only `cryptography` is needed, imported when a key is used.
"""
from __future__ import annotations

from .envelope import MAX_SIGNATURE_BYTES
from .keys import (
    KEY_ENV,
    KEY_FILE_ENV,
    TRUSTED_ENV,
    PublicKey,
    SigningKey,
    generate,
    load_signing_key,
    load_trusted_keys,
    parse_public_keys,
    signing_key_from_pem,
)
from .provenance import Provenance
from .sign import (
    SIGNATURE_MEDIA_TYPE,
    Sidecar,
    SignResult,
    oci_signature,
    sidecars,
    sign_dist,
    sign_if_configured,
    sign_manifest,
    sign_provenance,
)
from .statement import SignedBundle
from .verify import (
    Policy,
    check_archive,
    check_files,
    check_published,
    file_changes,
    policy_from_env,
    trusted_keys_from_env,
    verify_bundle,
    verify_bundle_manifest,
    verify_provenance,
)

__all__ = [
    "KEY_ENV", "KEY_FILE_ENV", "MAX_SIGNATURE_BYTES", "SIGNATURE_MEDIA_TYPE", "TRUSTED_ENV",
    "Policy", "Provenance", "PublicKey", "Sidecar", "SignResult", "SignedBundle", "SigningKey",
    "check_archive", "check_files", "check_published", "file_changes", "generate",
    "load_signing_key", "load_trusted_keys", "oci_signature", "parse_public_keys",
    "policy_from_env", "sidecars", "sign_dist", "sign_if_configured", "sign_manifest",
    "sign_provenance", "signing_key_from_pem", "trusted_keys_from_env", "verify_bundle",
    "verify_bundle_manifest", "verify_provenance",
]
