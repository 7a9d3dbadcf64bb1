"""Signatures as OCI artifacts attached to the manifest they sign (referrers).

A signature travels as its own small image manifest: `artifactType` and the one layer's media type
are the signature's (a Sigstore bundle), the config is the OCI empty descriptor (`{}`), and
`subject` names the signed manifest. Registries with the referrers API list it under the subject
(`GET /v2/<repo>/referrers/<digest>`); those without it (docker-registry 2.8, many mirrors) find it
under the tag `sha256-<hex of the subject digest>.sig`, the fallback cosign and others read. We
always write both: the manifest carries `subject`, and it is pushed under that tag.

In an OCI image layout the same manifest is listed in index.json under the same tag name, so
`skopeo inspect oci:DIR:sha256-<hex>.sig` and `oras discover --oci-layout` see it beside the
subject. The manifest holds no time, so the same signature always gives the same digest and a
re-publish writes and sends nothing.
"""
from __future__ import annotations

from . import media
from .layout import OciLayout

EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_DATA = b"{}"
SIG_SUFFIX = ".sig"
SIGNATURE_KIND = "signature"
CONTENT = "dev.sigstore.bundle.content"  # the annotation cosign's bundle format writes


def fallback_tag(subject_digest: str) -> str:
    """`sha256-<hex>.sig`: where a registry without the referrers API keeps the signature."""
    if not media.DIGEST_RE.match(subject_digest):
        raise ValueError(f"{subject_digest!r}: not a sha256 digest")
    return subject_digest.replace(":", "-") + SIG_SUFFIX


def signature_manifest(subject: media.Descriptor, signature_media_type: str,
                       config: media.Descriptor, layer: media.Descriptor) -> bytes:
    """The canonical bytes of the signature artifact's manifest."""
    doc = {"schemaVersion": 2, "mediaType": media.MANIFEST,
           "artifactType": signature_media_type, "config": config.to_json(),
           "layers": [layer.to_json()],
           "subject": {"mediaType": subject.media_type, "digest": subject.digest,
                       "size": subject.size},
           "annotations": {media.KIND: SIGNATURE_KIND, CONTENT: "dsse-envelope"}}
    return media.canonical(doc)


def attach(layout: OciLayout, subject_tags: list[str], signature: bytes,
           media_type: str) -> list[media.Descriptor]:
    """Put `signature` into `layout` as a referrer of each manifest tagged in `subject_tags`.

    Blobs first, index.json last, and only when it changes: attaching the same signature again
    writes nothing. A different signature for the same subject (a re-sign with a new key)
    replaces the old entry. The index lists every other manifest first, in its order, then the
    signature entries in the order of `subject_tags`, so the image stage (which attaches the
    dist directory's signature when it builds) and `kiln publish` write the same bytes. Returns
    the signature entries (each tagged with its fallback tag).
    """
    config = layout.put_bytes(EMPTY_DATA, EMPTY)
    layer = layout.put_bytes(signature, media_type)
    added = []
    for tag in subject_tags:
        subject = layout.find(tag)
        desc = layout.put_bytes(signature_manifest(subject, media_type, config, layer),
                                media.MANIFEST)
        added.append(_entry(desc, fallback_tag(subject.digest), media_type))
    current = layout.manifests()
    replaced = {d.annotation(media.REF_NAME) for d in added}
    wanted = [d for d in current if d.annotation(media.REF_NAME) not in replaced] + added
    if wanted != current:
        layout.write_index(wanted)
    return added


def find(layout: OciLayout, subject_digest: str) -> media.Descriptor | None:
    """The layout's signature entry for `subject_digest`, or None when it has none."""
    tag = fallback_tag(subject_digest)
    for d in layout.manifests():
        if d.annotation(media.REF_NAME) == tag:
            return d
    return None


def _entry(desc: media.Descriptor, tag: str, artifact_type: str) -> media.Descriptor:
    return media.Descriptor(desc.media_type, desc.digest, desc.size, ((media.REF_NAME, tag),),
                            artifact_type)
