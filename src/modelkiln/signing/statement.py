"""What a bundle signature says: an in-toto Statement v1 in the OpenSSF model-signing layout.

    subject:   [{name: "<name>/<version>/<backend>", digest: {sha256: <root digest>}}]
    predicateType: https://model_signing/signature/v1.0
    predicate:
      serialization: {method: files, hash_type: sha256, allow_symlinks: false,
                      ignore_paths: [manifest.json, bundle.sig]}
      resources: [{name: <path>, algorithm: sha256, digest: <hex>}, ...]   every bundle file
      modelkiln: {name, version, backend, manifest_sha256, bundle_manifest_sha256,
                  archive_sha256, archive_size}

`resources` are the (path, sha256) pairs of the bundle manifest, so the reference model-signing
verifier can check an unpacked bundle directory by itself. The root digest is sha256 over the
raw resource digests in listed order, as that verifier recomputes it. Its spec lets a predicate
carry more fields, which its verifiers ignore; `modelkiln` is ours and binds what a file list
alone cannot: the exact published manifest (its sha256), the tarball, and the bundle's name,
version and backend, so a signature cannot be replayed onto another version. The bundle's own
`manifest.json` (inside the tarball, or a layer of an OCI artifact) is signed by its sha256 in
`bundle_manifest_sha256`, and left to `ignore_paths` for the reference verifier.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from ..artifacts import manifest as mf
from ..artifacts import names
from ..artifacts.digest import sha256_bytes
from ..artifacts.manifest import PublishedManifest
from ..errors import SignatureError

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
MODEL_PREDICATE = "https://model_signing/signature/v1.0"
SIGNATURE = names.SIGNATURE
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class SignedBundle:
    """What a verified signature vouches for. Every field came out of the signed payload."""

    name: str
    version: str
    backend: str
    manifest_sha256: str
    bundle_manifest_sha256: str  # the tarball's own manifest.json: the published one less archive
    archive_sha256: str
    archive_size: int
    files: tuple[tuple[str, str], ...]  # (path, sha256), as listed
    key_id: str = ""  # the trusted key that verified it (filled in by verify)

    @property
    def label(self) -> str:
        return f"{self.name} {self.version} ({self.backend})"


def root_digest(files: tuple[tuple[str, str], ...]) -> str:
    """sha256 over the raw 32-byte digests in order: the model-signing subject digest."""
    h = hashlib.sha256()
    for _, digest in files:
        h.update(bytes.fromhex(digest))
    return h.hexdigest()


def from_manifest(manifest: PublishedManifest, manifest_bytes: bytes) -> SignedBundle:
    """The record a signature over this published manifest (and its exact bytes) will carry."""
    files = tuple(sorted((f["path"], f["sha256"]) for f in manifest["files"]))
    return SignedBundle(name=manifest["name"], version=manifest["version"],
                        backend=manifest["backend"],
                        manifest_sha256=sha256_bytes(manifest_bytes),
                        bundle_manifest_sha256=sha256_bytes(
                            mf.dumps(mf.without_archive(manifest))),
                        archive_sha256=manifest["archive"]["sha256"],
                        archive_size=manifest["archive"]["size"], files=files)


def encode(record: SignedBundle) -> bytes:
    """The statement bytes that get signed (stable: sorted keys, fixed layout)."""
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": f"{record.name}/{record.version}/{record.backend}",
                     "digest": {"sha256": root_digest(record.files)}}],
        "predicateType": MODEL_PREDICATE,
        "predicate": {
            "serialization": {"method": "files", "hash_type": "sha256", "allow_symlinks": False,
                              "ignore_paths": [names.MANIFEST, SIGNATURE]},
            "resources": [{"name": path, "algorithm": "sha256", "digest": digest}
                          for path, digest in record.files],
            "modelkiln": {"name": record.name, "version": record.version,
                          "backend": record.backend, "manifest_sha256": record.manifest_sha256,
                          "bundle_manifest_sha256": record.bundle_manifest_sha256,
                          "archive_sha256": record.archive_sha256,
                          "archive_size": record.archive_size},
        },
    }
    return json.dumps(statement, indent=2, sort_keys=True).encode() + b"\n"


def decode(statement: Any, origin: str) -> SignedBundle:
    """Read a verified statement back into a record; a malformed one is refused in one line."""
    def bad(what: str) -> SignatureError:
        return SignatureError(f"{origin}: the signed statement {what}; it was not written by "
                              "modelkiln, re-sign the bundle with `kiln sign`")

    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
        raise bad(f"is not an in-toto {STATEMENT_TYPE}")
    if statement.get("predicateType") != MODEL_PREDICATE:
        raise bad(f"has predicateType {statement.get('predicateType')!r}, not {MODEL_PREDICATE}")
    predicate = statement.get("predicate")
    ours = predicate.get("modelkiln") if isinstance(predicate, dict) else None
    resources = predicate.get("resources") if isinstance(predicate, dict) else None
    if not isinstance(ours, dict) or not isinstance(resources, list):
        raise bad("has no modelkiln section or no resources")
    files = []
    for item in resources:
        if not isinstance(item, dict) or item.get("algorithm") != "sha256" \
                or not isinstance(item.get("name"), str) \
                or not _HEX64.fullmatch(str(item.get("digest"))):
            raise bad("lists a resource that is not a (name, sha256) pair")
        files.append((item["name"], item["digest"]))
    keys = ("name", "version", "backend", "manifest_sha256", "bundle_manifest_sha256",
            "archive_sha256")
    if not all(isinstance(ours.get(k), str) and ours[k] for k in keys) \
            or not isinstance(ours.get("archive_size"), int):
        raise bad("lacks name, version, backend, manifest or archive digests")
    text: dict[str, str] = {k: ours[k] for k in keys}
    subject = statement.get("subject")
    digest = subject[0].get("digest", {}).get("sha256") \
        if isinstance(subject, list) and len(subject) == 1 and isinstance(subject[0], dict) \
        else None
    if digest != root_digest(tuple(files)):
        raise bad("has a subject digest that does not match its resources")
    return SignedBundle(name=text["name"], version=text["version"], backend=text["backend"],
                        manifest_sha256=text["manifest_sha256"],
                        bundle_manifest_sha256=text["bundle_manifest_sha256"],
                        archive_sha256=text["archive_sha256"], archive_size=ours["archive_size"],
                        files=tuple(files))
