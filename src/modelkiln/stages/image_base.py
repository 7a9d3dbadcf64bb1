"""The serving image's base: pulled from a registry by digest, or read from a local OCI layout
(`oci:PATH`, e.g. made by `kiln base`), its blobs linked into the image's layout.

Before any layer of ours is written, the base must hold the Python the environment is resolved
for (`image.python`): `kiln base` records it in the config's labels; any other base's layers are
scanned by their tar headers once (the answer is kept per config digest in `.kiln/oci-cache/`).
A base without python3 is refused here, so an image that cannot start is never written.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..artifacts.atomic import write_bytes
from ..artifacts.oci import media
from ..artifacts.oci.layout import OciLayout
from ..artifacts.oci.rootfs import base_python, scan_python
from ..artifacts.statefile import load_json
from ..errors import BuildError, KilnError
from ..model.bundle import ImageSpec
from ..transport.oci import Reference, Registry
from ..transport.oci_pull import pull
from .base import RunContext

DOCKER_TO_OCI = {media.DOCKER_LAYER_GZIP: media.LAYER_GZIP,
                 "application/vnd.docker.image.rootfs.diff.tar": media.LAYER_TAR}


def _trusted(ctx: RunContext) -> Any:
    return lambda p, d: ctx.cache.digest(p) == d.split(":", 1)[1]


def _from_registry(ctx: RunContext, cache: OciLayout, base: str,
                   platform: str) -> tuple[media.Descriptor, list[media.Descriptor]]:
    ref = Reference.parse(base)
    if ref.digest is None:
        raise KilnError(f"image.base {base}: not pinned by digest; write REPO@sha256:<digest>")
    reg = Registry(ref.host)
    try:
        pulled = pull(reg, ref, cache, platform=platform, trusted=_trusted(ctx))
    finally:
        reg.close()
    return pulled.config, list(pulled.layers)


def _from_layout(ctx: RunContext, img: ImageSpec) -> tuple[OciLayout, media.Descriptor,
                                                              list[media.Descriptor]]:
    assert img.base_layout is not None
    src = OciLayout(img.base_layout)
    pinned = img.base.split("@", 1)[1] if "@" in img.base else None
    found = [d for d in src.manifests() if d.media_type in (media.MANIFEST,
                                                            media.DOCKER_MANIFEST)]
    if pinned:
        found = [d for d in found if d.digest == pinned]
    if len(found) != 1:
        raise BuildError(f"image.base {img.base}: the layout holds {len(found)} matching images; "
                         "pin one with oci:PATH@sha256:<manifest digest>")
    doc = json.loads(src.read_blob(found[0]))
    try:
        config = media.Descriptor.from_json(doc["config"], img.base)
        layers = [media.Descriptor.from_json(d, img.base) for d in doc["layers"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise BuildError(f"image.base {img.base}: not an image manifest ({exc})") from None
    for blob in (config, *layers):
        path = src.blob_path(blob.digest)
        if not src.has(blob.digest, blob.size) or not _trusted(ctx)(path, blob.digest):
            raise BuildError(f"image.base {img.base}: blob {blob.digest} is missing or damaged; "
                             "rebuild the base (`kiln base`)")
    return src, config, layers


def fetch_base(ctx: RunContext, lay: OciLayout,
               img: ImageSpec) -> tuple[dict[str, Any], list[media.Descriptor]]:
    """Link the base's blobs into `lay`; returns its image config and layer descriptors."""
    cache = OciLayout(ctx.layout.state / "oci-cache")
    cache.init()
    if img.base_layout is not None:
        src, config, layers = _from_layout(ctx, img)
    else:
        src = cache
        config, layers = _from_registry(ctx, cache, img.base, img.platform)
    for blob in (config, *layers):
        lay.link(src.blob_path(blob.digest), blob.digest)
    raw = src.read_blob(config)
    doc = json.loads(raw)
    if not isinstance(doc, dict) or "rootfs" not in doc:
        raise BuildError(f"image.base {img.base}: its config is not an image config (an artifact?)")
    _check_python(ctx, img, raw, config.digest, [src.blob_path(d.digest) for d in layers])
    return doc, [media.Descriptor(DOCKER_TO_OCI.get(d.media_type, d.media_type), d.digest, d.size)
                 for d in layers]


def _check_python(ctx: RunContext, img: ImageSpec, config: bytes, digest: str,
                  layers: list[Path]) -> None:
    """Refuse a base whose python3 is missing or another version than `image.python`."""
    found = base_python(config)
    if found is None:
        memo_path = ctx.layout.state / "oci-cache" / "python.json"
        memo = load_json(memo_path)  # damaged or missing: scanned again
        memo = memo if isinstance(memo, dict) else {}
        found = memo.get(digest)
        if not isinstance(found, str):
            found = scan_python(layers) or ""
            memo[digest] = found
            write_bytes(memo_path, media.canonical(memo), durable=False)
    if not found:
        raise BuildError(f"image.base {img.base}: holds no python3 standard library "
                         "(usr/lib/python3.N/), so the image could not start; name a base with "
                         "python3 (`kiln base PATH` makes one from Debian's packages)")
    if found != img.python:
        raise BuildError(f"image.base {img.base}: has Python {found}, but image.python is "
                         f"{img.python}; set image.python: \"{found}\" and run `kiln image-lock` "
                         "so the wheels match its ABI")
