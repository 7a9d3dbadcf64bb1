"""Finding and checking the signature of an OCI model artifact, before any of its files is fetched.

`kiln publish` attaches `bundle.sig` to the artifact as a referrer (artifacts/oci/referrers.py).
Readers look where the registry can answer: the referrers API
(`GET /v2/<repo>/referrers/<digest>?artifactType=...`) when the registry has it, and always the
`sha256-<hex>.sig` tag that registries without it (docker-registry 2.8) hold. Each candidate is
read by digest (the registry's bytes must hash to it), its signature layer is size-bounded and
hashed while it streams, and the signed statement is checked with
`signing.verify_bundle_manifest` against the artifact's bundle-manifest layer: trusted key, the
bundle manifest's exact bytes, and the expected name and version. Where a candidate is found
does not matter; what it signed does. The first one that verifies wins; when none does, the first
refusal is the one line the operator sees (exit 7).
"""
from __future__ import annotations

import io
import json
import urllib.parse
from typing import Any

from .. import signing
from ..artifacts.oci import media, referrers
from ..errors import SignatureError
from ..signing.keys import TRUSTED_ENV
from ..transport.oci import Reference, Registry

MAX_CANDIDATES = 8  # a registry may list junk referrers; we read at most this many
MAX_INDEX = 1 << 20


def referrer_digests(reg: Registry, ref: Reference, subject: str,
                     artifact_type: str) -> tuple[list[str], str]:
    """Digests of `subject`'s referrers of `artifact_type`, and how the registry answered.

    A registry without the referrers API answers 404 (or another error): no candidates, and the
    caller falls back to the tag."""
    query = urllib.parse.urlencode({"artifactType": artifact_type})
    r = reg.request("GET", f"/v2/{ref.repository}/referrers/{subject}?{query}",
                    scope=f"repository:{ref.repository}:pull", headers={"Accept": media.INDEX})
    if r.status != 200:
        return [], f"referrers API not offered (HTTP {r.status})"
    if len(r.body) > MAX_INDEX:
        return [], "referrers list too large, ignored"
    try:
        doc = json.loads(r.body)
        found = [media.Descriptor.from_json(d, "referrers") for d in doc.get("manifests") or []]
    except (ValueError, AttributeError, TypeError):
        return [], "referrers list unreadable, ignored"
    digests = [d.digest for d in found if d.artifact_type == artifact_type]
    return digests, f"{len(digests)} referrer(s)"


def candidates(reg: Registry, ref: Reference, subject: str, artifact_type: str
               ) -> tuple[list[tuple[str, bytes | SignatureError]], str]:
    """(signature manifest digest, signature bytes or why it is no signature) of every
    candidate; and where we looked. A registry that serves bytes other than a digest names
    stays a PublishError (exit 1), as for every other blob."""
    digests, how = referrer_digests(reg, ref, subject, artifact_type)
    tag = referrers.fallback_tag(subject)
    tagged = reg.manifest_digest(ref.repository, tag)
    where = f"{how}; tag {tag}: {'present' if tagged else 'absent'}"
    if tagged is not None and tagged not in digests:
        digests.append(tagged)
    out: list[tuple[str, bytes | SignatureError]] = []
    for digest in digests[:MAX_CANDIDATES]:
        try:
            out.append((digest, _signature_layer(reg, ref, digest, artifact_type)))
        except SignatureError as exc:
            out.append((digest, exc))  # refused below, with this reason
    return out, where


def _signature_layer(reg: Registry, ref: Reference, digest: str, artifact_type: str) -> bytes:
    """The signature blob of the signature manifest `digest` (checked by digest and size)."""
    data, _media, _digest = reg.get_manifest(ref.repository, digest)
    origin = f"{ref.host}/{ref.repository}@{digest}"
    try:
        doc: dict[str, Any] = json.loads(data)
        layers = [media.Descriptor.from_json(d, origin) for d in doc.get("layers") or []]
    except (ValueError, AttributeError, TypeError):
        raise SignatureError(f"{origin}: not a signature artifact") from None
    found = [d for d in layers if d.media_type == artifact_type]
    if len(found) != 1 or found[0].size > signing.MAX_SIGNATURE_BYTES:
        raise SignatureError(f"{origin}: not a signature artifact (one {artifact_type} layer "
                             f"of at most {signing.MAX_SIGNATURE_BYTES} bytes expected)")
    buf = io.BytesIO()
    reg.get_blob(ref.repository, found[0].digest, found[0].size, buf)
    return buf.getvalue()


def verify(reg: Registry, ref: Reference, subject: str, bundle_manifest: bytes,
           policy: signing.Policy, origin: str) -> signing.SignedBundle:
    """The signed record that vouches for `bundle_manifest`, or SignatureError (one line)."""
    found, where = candidates(reg, ref, subject, signing.SIGNATURE_MEDIA_TYPE)
    if not found:
        raise SignatureError(f"{origin}: no signature found ({where}), and {TRUSTED_ENV} "
                             "requires every bundle to be signed; publish it with a signing key "
                             f"(KILN_SIGNING_KEY_FILE), or unset {TRUSTED_ENV} to accept "
                             "unsigned bundles")
    first: SignatureError | None = None
    for digest, sig in found:
        if isinstance(sig, SignatureError):
            first = first or sig
            continue
        sig_origin = f"{ref.host}/{ref.repository}@{digest[:19]} (signature of {subject[:19]})"
        try:
            return signing.verify_bundle_manifest(
                bundle_manifest, sig, policy.trusted, policy.expected_name,
                policy.expected_version, origin=sig_origin,
                manifest_origin=f"{origin} bundle manifest")
        except SignatureError as exc:
            first = first or exc
    assert first is not None
    raise first
