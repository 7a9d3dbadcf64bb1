"""Pull one image or artifact from a registry into a local OCI layout, checking every byte.

Used for base images (the image stage) and for model artifacts (the runtime bootstrap). The
manifest is fetched by digest where the reference pins one (the registry's bytes must hash to
it), an index is narrowed to one platform, and each blob is streamed into the layout while it is
hashed: a blob whose bytes do not match its descriptor is refused and never lands in the layout.
Blobs the layout already holds (and that `trusted` vouches for) are not fetched again.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifacts.oci import media
from ..artifacts.oci.layout import OciLayout
from ..errors import PublishError
from .oci import Progress, Reference, Registry
from .oci_bounds import loads_object


@dataclass(frozen=True)
class Pulled:
    """What `pull` fetched: the manifest (bytes, parsed, descriptor), its config and layers."""

    reference: Reference  # pinned to the manifest's digest
    manifest: media.Descriptor
    document: dict[str, Any]
    config: media.Descriptor
    layers: tuple[media.Descriptor, ...]
    bytes_received: int


def _platform_manifest(index: dict[str, Any], platform: str, origin: str) -> media.Descriptor:
    want = platform.split("/")
    for raw in descriptors(index, "manifests", origin):
        d = descriptor(raw, origin)
        p = dict(d.platform)
        have = [p.get("os", ""), p.get("architecture", "")] + ([p["variant"]] if "variant" in p
                                                               and len(want) > 2 else [])
        if have == want:
            return d
    raise PublishError(f"{origin}: the index has no manifest for platform {platform}; pick "
                       "another base or set image.platform")


def pull(reg: Registry, ref: Reference, layout: OciLayout, *, platform: str = "linux/amd64",
         progress: Progress | None = None,
         trusted: Callable[[Path, str], bool] | None = None) -> Pulled:
    """Fetch `ref`'s manifest, config and layers into `layout` (blobs only; index untouched)."""
    layout.init()
    data, media_type, digest = reg.get_manifest(ref.repository, ref.ref)
    origin = f"{reg.host}/{ref.repository}@{digest}"
    doc = _json(data, origin)
    if media_type in (media.INDEX, media.DOCKER_LIST) or "manifests" in doc:
        chosen = _platform_manifest(doc, platform, origin)
        data, media_type, digest = reg.get_manifest(ref.repository, chosen.digest)
        origin = f"{reg.host}/{ref.repository}@{digest}"
        doc = _json(data, origin)
    config = descriptor(doc.get("config"), origin + " config")
    layers = tuple(descriptor(d, f"{origin} layer {i}")
                   for i, d in enumerate(descriptors(doc, "layers", origin)))
    desc = layout.put_bytes(data, media_type or media.MANIFEST)
    received = len(data)
    for blob in (config, *layers):
        path = layout.blob_path(blob.digest)
        if layout.has(blob.digest, blob.size) and (trusted is None or trusted(path, blob.digest)):
            continue
        tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
        try:
            with open(tmp, "wb") as out:
                reg.get_blob(ref.repository, blob.digest, blob.size, out, progress)
            layout.adopt(tmp, blob.digest)
        finally:
            tmp.unlink(missing_ok=True)
        received += blob.size
    return Pulled(ref.with_digest(digest), desc, doc, config, layers, received)


def _json(data: bytes, origin: str) -> dict[str, Any]:
    return loads_object(data, origin)


def descriptors(doc: dict[str, Any], key: str, origin: str) -> list[object]:
    """The list a manifest holds under `key` (`layers`, `manifests`; absent is empty), or one
    PublishError when a registry put anything else there."""
    found = doc.get(key)
    if found is None:
        return []
    if not isinstance(found, list):
        raise PublishError(f"{origin}: '{key}' is not a list; refusing the manifest")
    return found


def descriptor(raw: object, origin: str) -> media.Descriptor:
    """A descriptor from a registry's manifest; one PublishError for any malformed shape."""
    try:
        return media.Descriptor.from_json(raw, origin)
    except (ValueError, TypeError) as exc:
        raise PublishError(str(exc) if isinstance(exc, ValueError) and origin in str(exc)
                           else f"{origin}: malformed descriptor; refusing the manifest") from None
