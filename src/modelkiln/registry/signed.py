"""`kiln registry verify`'s signature check: the entry's bytes are the ones its publisher signed.

With REGISTRY_TRUSTED_KEYS set, verify also reads the published manifest and `bundle.sig` (from
the entry's dist directory, else beside its published tarball, `s3://` or `file://`), checks the
signature against the trusted keys and the entry's version and backend, and then the bytes the
entry points at against the signed digests: the unpacked files of a store version, or the
tarball of a dist directory. Without trusted keys nothing changes. Refusals are SignatureError
(exit 7), one line each.
"""
from __future__ import annotations

import os
from pathlib import Path

from .. import signing, transport
from ..artifacts import names
from ..artifacts.digest import sha256_file
from ..errors import SignatureError
from ..signing.files import read_regular
from ..store import BUNDLE_DIR
from .entries import RegistryEntry


def check_entry(entry: RegistryEntry, root: Path,
                policy: signing.Policy) -> signing.SignedBundle | None:
    """Verify the entry's signature and bytes; None when no trusted keys are configured."""
    if not policy.required:
        return None
    manifest, signature, sig_origin, manifest_origin = _published(entry)
    record = signing.check_published(manifest, signature, policy, origin=sig_origin,
                                     manifest_origin=manifest_origin)
    assert record is not None  # required: check_published returns a record or raises
    if (entry.version and record.version != entry.version) or record.backend != entry.backend:
        raise SignatureError(f"{sig_origin}: the signature is for {record.label}, but registry "
                             f"entry {entry.name} is {entry.version} ({entry.backend}); re-publish "
                             "the entry or point it at its own bundle")
    if entry.artifacts.store:
        tree = root / BUNDLE_DIR
        signing.check_files(record, tree, str(tree))
    else:
        archive = root / names.ARCHIVE
        signing.check_archive(record, archive.stat().st_size, sha256_file(archive),
                              str(archive))
    return record


def _published(entry: RegistryEntry) -> tuple[bytes, bytes | None, str, str]:
    """(published manifest, signature or None, their origins) for the entry."""
    local = Path(entry.artifacts.local) if entry.artifacts.local else None
    if local is not None and (local / names.MANIFEST).is_file():
        sig = local / names.SIGNATURE
        fix = "rebuild and sign the bundle (`kiln build`, `kiln sign`)"
        manifest = read_regular(local / names.MANIFEST, "manifest", 64 << 20, fix=fix)
        signature = read_regular(sig, "signature", signing.MAX_SIGNATURE_BYTES, fix=fix) \
            if os.path.lexists(sig) else None
        return manifest, signature, str(sig), str(local / names.MANIFEST)
    uri = entry.artifacts.s3
    if not uri:
        raise SignatureError(f"{entry.name}: no published tarball or dist directory to find "
                             f"{names.SIGNATURE} beside; REGISTRY_TRUSTED_KEYS needs one (publish "
                             "to s3:// or file://, or unset REGISTRY_TRUSTED_KEYS)")
    manifest_uri = transport.sibling(uri, names.MANIFEST)
    sig_uri = transport.sibling(uri, names.SIGNATURE)
    remote = transport.read_small(manifest_uri)
    if remote is None:
        raise SignatureError(f"{manifest_uri}: not found, so {entry.name}'s signature cannot be "
                             "checked; re-publish it (`kiln publish`)")
    return (remote, transport.read_small(sig_uri, limit=signing.MAX_SIGNATURE_BYTES,
                                           what="signature"), sig_uri, manifest_uri)
