"""The wire format of a signature: a DSSE envelope inside a Sigstore bundle (v0.3, JSON).

This is the format the OpenSSF model-signing tools read and write for key-based signatures:

    {"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
     "verificationMaterial": {"publicKey": {"hint": <key id>}, "tlogEntries": []},
     "dsseEnvelope": {"payload": <base64 statement>, "payloadType": "application/vnd.in-toto+json",
                      "signatures": [{"sig": <base64 DER ECDSA>, "keyid": ""}]}}

The signature covers DSSE's pre-authentication encoding (PAE) of the payload type and the payload
bytes, never the JSON around them, so re-serialising the outer bundle cannot change what was
signed. There is no transparency-log entry and no certificate: trust comes from a list of public
keys the verifier holds, which is what lets verification run with no network at all.

Written by hand rather than with `sigstore` / `model_signing`: those pull in pydantic, protobuf,
TUF and network clients, while the format is a few JSON fields; keeping it here keeps the serving
host's bootstrap light (cryptography only).
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from ..errors import SignatureError

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
MAX_SIGNATURE_BYTES = 16 << 20  # a 100k-file bundle's statement is ~20 MiB of base64; ours are KiB


@dataclass(frozen=True)
class Envelope:
    """An opened (not yet verified) signature: what was signed, the signature, the key hint."""

    payload: bytes
    payload_type: str
    signature: bytes
    key_hint: str  # sha256 of the signer's PEM public key; "" when the signer gave none


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: the exact bytes an envelope's signature covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def wrap(payload: bytes, signature: bytes, key_hint: str) -> bytes:
    """Serialise a signed payload as a Sigstore bundle (stable bytes: sorted keys, one line)."""
    doc = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": key_hint}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(signature).decode(), "keyid": ""}],
        },
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def unwrap(data: bytes, origin: str) -> Envelope:
    """Parse a Sigstore bundle holding a DSSE envelope; refuse anything else in one line.

    Checks shape and size only; `verify.py` decides whether the signature is good.
    """
    if len(data) > MAX_SIGNATURE_BYTES:
        raise SignatureError(f"{origin}: {len(data)} bytes, over the {MAX_SIGNATURE_BYTES} byte "
                             "limit for a signature; this is not a modelkiln signature, re-sign "
                             "the bundle")
    doc = strict_json(data, origin, "signature")
    if not isinstance(doc, dict) or doc.get("mediaType") != BUNDLE_MEDIA_TYPE:
        raise SignatureError(f"{origin}: not a Sigstore bundle ({BUNDLE_MEDIA_TYPE} expected); "
                             "re-sign the bundle with `kiln sign`")
    env = doc.get("dsseEnvelope")
    sigs = env.get("signatures") if isinstance(env, dict) else None
    if not isinstance(env, dict) or not isinstance(sigs, list) or len(sigs) != 1 \
            or not isinstance(sigs[0], dict):
        raise SignatureError(f"{origin}: no DSSE envelope with exactly one signature; re-sign the "
                             "bundle with `kiln sign`")
    payload_type = env.get("payloadType")
    if payload_type != PAYLOAD_TYPE:
        raise SignatureError(f"{origin}: payload type {payload_type!r}, expected {PAYLOAD_TYPE}; "
                             "re-sign the bundle with `kiln sign`")
    payload = _b64(env.get("payload"), origin, "payload")
    signature = _b64(sigs[0].get("sig"), origin, "signature")
    material = doc.get("verificationMaterial")
    key = material.get("publicKey") if isinstance(material, dict) else None
    hint = key.get("hint") if isinstance(key, dict) else None
    return Envelope(payload, payload_type, signature, hint if isinstance(hint, str) else "")


def strict_json(data: bytes, origin: str, what: str) -> Any:
    """json.loads that refuses duplicate keys, so no two readers can see different values."""
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise SignatureError(f"{origin}: duplicate key {key!r} in the {what}; refusing "
                                     "an ambiguous document, re-sign the bundle")
            out[key] = value
        return out
    try:
        return json.loads(data, object_pairs_hook=pairs)
    except (ValueError, RecursionError) as exc:  # SignatureError from `pairs` passes through
        raise SignatureError(f"{origin}: the {what} is not valid JSON ({exc}); re-sign the "
                             "bundle with `kiln sign`") from None


def _b64(value: object, origin: str, field: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise SignatureError(f"{origin}: the envelope has no {field}; re-sign the bundle")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{origin}: the envelope's {field} is not base64; re-sign the "
                             "bundle") from None
