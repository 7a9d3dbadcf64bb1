"""Publishing to OCI registries: the model artifact and the serving image of a built layout.

Order, like every publisher here: content first, one commit point last. Each blob (config,
layers) is HEADed and sent only when the registry lacks it, so a re-push after a thresholds-only
change sends just the thresholds layer, the config and the manifest; the manifest goes last,
under its tag, and the digest the registry answers must be ours.

Tags are immutable like published versions: a tag that already names a different manifest is
refused (ConflictError, exit 5) unless force=True; the same manifest again sends nothing. A
registry has no conditional PUT, so two publishers racing on one new tag are not told apart here
(registries with server-side tag immutability, e.g. Harbor or ECR, refuse the second); the check
still stops every sequential overwrite.

Where things go (`release_oci`): `to=oci://HOST/REPO:TAG` (templates allowed) sends the artifact
there; otherwise the spec's `publish.oci`; `to=local` (or any other explicit `to`) pushes nothing
and records the embedded default, the OCI layout under dist/. The serving image goes to
`image.repository:image.tag` when `image.push` is true and a registry is being published to.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..artifacts.oci import media
from ..artifacts.oci.layout import OciLayout
from ..errors import ConflictError, KilnError
from ..model.bundle import Bundle
from ..paths import Layout
from ..stages.image import IMAGE_TAG, MODEL_TAG, oci_dir
from ..transport.oci import Progress, Reference, Registry
from .bundle import PublishResult

SCHEME = "oci://"


@dataclass(frozen=True)
class OciPush:
    """What one push did. `unchanged`: the tag already named this manifest; nothing was sent."""

    reference: str  # HOST/REPO:TAG
    digest: str
    blobs_uploaded: int = 0
    blobs_skipped: int = 0
    bytes_uploaded: int = 0
    unchanged: bool = False
    forced: bool = False
    replaced: str | None = None

    @property
    def pinned(self) -> str:
        return f"{self.reference.split('@', 1)[0]}@{self.digest}"


@dataclass(frozen=True)
class OciRelease:
    """The OCI side of a release: the pushes made (None when nothing was pushed) and the pinned
    references to record (a registry's, or the local layout's `oci:DIR:TAG@digest`)."""

    layout: Path
    artifact: OciPush | None
    image: OciPush | None
    artifact_ref: str
    image_ref: str | None


def _chunk_size() -> int | None:
    """Chunked uploads for proxies that cap request bodies: $KILN_OCI_CHUNK_MB, else one PUT."""
    raw = os.environ.get("KILN_OCI_CHUNK_MB", "").strip()
    if not raw:
        return None
    try:
        return max(1, int(raw)) << 20
    except ValueError:
        raise KilnError(f"KILN_OCI_CHUNK_MB={raw!r}: give a whole number of MiB") from None


def push(layout_dir: Path, tag: str, target: str, *, force: bool = False,
         chunk: int | None = None, progress: Progress | None = None) -> OciPush:
    """Push the manifest tagged `tag` in the layout, and its blobs, to `target` (HOST/REPO:TAG)."""
    ref = Reference.parse(target)
    if ref.tag is None or ref.digest is not None:
        raise KilnError(f"{target}: publish to a tag (HOST/REPO:TAG), not a digest")
    lay = OciLayout(layout_dir)
    desc = lay.find(tag)
    data = lay.read_blob(desc)
    doc = json.loads(data)
    blobs = [media.Descriptor.from_json(d, str(target))
             for d in [doc["config"], *doc.get("layers", [])]]
    reg = Registry(ref.host)
    try:
        existing = reg.manifest_digest(ref.repository, ref.tag)
        if existing == desc.digest:
            return OciPush(str(ref), desc.digest, blobs_skipped=len(blobs), unchanged=True)
        if existing is not None and not force:
            raise ConflictError(str(ref), existing, desc.digest)
        sent = uploaded = skipped = 0
        for blob in blobs:
            if reg.blob_size(ref.repository, blob.digest) == blob.size:
                skipped += 1
                continue
            sent += reg.upload_blob(ref.repository, blob.digest, blob.size,
                                    lay.blob_path(blob.digest), chunk=chunk or _chunk_size(),
                                    progress=progress)
            uploaded += 1
        reg.put_manifest(ref.repository, ref.tag, data, desc.media_type)
    finally:
        reg.close()
    return OciPush(str(ref), desc.digest, uploaded, skipped, sent + len(data),
                   forced=existing is not None, replaced=existing)


def _render(template: str, bundle: Bundle, version: str, backend: str) -> str:
    try:
        return template.removeprefix(SCHEME).format(name=bundle.name, version=version,
                                                    backend=backend)
    except (KeyError, IndexError, ValueError):
        raise KilnError(f"{template}: unknown placeholder in the OCI reference; use {{name}}, "
                        "{version} or {backend}") from None


def release_oci(bundle: Bundle, backend: str, version: str, *, to: str | None,
                force: bool = False, progress: Progress | None = None) -> OciRelease | None:
    """Push (or record) the OCI layout of one backend; None when the spec asks for no OCI."""
    layout_dir = oci_dir(Layout(bundle.root), bundle.name, version, backend)
    wants_image = bundle.image is not None and bundle.image.backend == backend
    if bundle.publish.oci is None and not wants_image and not (to or "").startswith(SCHEME):
        return None
    lay = OciLayout(layout_dir)
    if not (layout_dir / "index.json").is_file():
        raise KilnError(f"{layout_dir}: no OCI layout; build it first (`kiln build`, task "
                        f"image:{bundle.name}-{backend}; the spec needs publish.oci or an image "
                        "section for that task to exist)")
    art = lay.find(MODEL_TAG)
    img = lay.find(IMAGE_TAG) if wants_image else None
    if to is not None and not to.startswith(SCHEME):
        target = None  # an explicit non-OCI destination: nothing is pushed, the layout recorded
    else:
        target = _render(to or bundle.publish.oci or "", bundle, version, backend) or None
    pushed = push(layout_dir, MODEL_TAG, target, force=force, progress=progress) \
        if target else None
    pushed_image = None
    if img is not None and bundle.image is not None and bundle.image.push and \
            (target is not None or to is None):
        tag = _render(bundle.image.tag, bundle, version, backend)
        pushed_image = push(layout_dir, IMAGE_TAG, f"{bundle.image.repository}:{tag}",
                            force=force, progress=progress)
    local = f"oci:{layout_dir}:"
    return OciRelease(
        layout_dir, pushed, pushed_image,
        pushed.pinned if pushed else f"{local}{MODEL_TAG}@{art.digest}",
        pushed_image.pinned if pushed_image else (
            f"{local}{IMAGE_TAG}@{img.digest}" if img else None))


def as_publish_result(oci: OciRelease, bundle: Bundle, backend: str, version: str,
                      archive_sha256: str) -> PublishResult:
    """The artifact push in the shape every publisher reports (for `--to oci://...`)."""
    push_ = oci.artifact
    assert push_ is not None
    return PublishResult(destination=SCHEME + push_.reference, archive_uri=push_.pinned,
                         manifest_uri=push_.pinned, name=bundle.name, version=version,
                         backend=backend, archive_sha256=archive_sha256,
                         bytes_uploaded=push_.bytes_uploaded, unchanged=push_.unchanged,
                         forced=push_.forced, replaced=push_.replaced)
