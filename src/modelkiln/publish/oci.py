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

Signed bundles (a `bundle.sig` in the dist directory, which `kiln publish` writes when a signing
key is set): the signature is attached to the model artifact and to the image as an OCI referrer
(artifacts/oci/referrers.py), first in a signed copy of the layout and then, with each push,
under `sha256-<hex>.sig` beside its subject, before the subject's manifest. The same signature
again sends nothing; a different one (a re-sign with a new key) replaces it without `--force`, as
the signature files on S3 are replaced: every signature attached was checked to sign this bundle.

The copy (`dist/<name>/<version>/oci/<backend>.signed/`, blobs hard-linked) is what makes signing
leave the build alone: the layout the image task built is its recorded output, so attaching to
it in place made `kiln plan` call the layout corrupt and rebuild it after every signed publish.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .. import signing
from ..artifacts import manifest as mf
from ..artifacts import names
from ..artifacts.digest import sha256_bytes
from ..artifacts.oci import media, referrers
from ..artifacts.oci.layout import OciLayout
from ..artifacts.oci.media import IMAGE_TAG, MODEL_TAG
from ..artifacts.statefile import load_json
from ..errors import ConflictError, KilnError
from ..model.bundle import Bundle
from ..paths import Layout
from ..transport.oci import Progress, Reference, Registry
from .bundle import PublishResult

SCHEME = "oci://"
SIGNED_SUFFIX = ".signed"  # the signed copy of a layout: `<layout>.signed` beside it


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
    signature: OciPush | None = None  # the signature pushed (or found there) beside it

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
    signed: bool = False  # bundle.sig attached to both in the layout (and pushed beside them)


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
    """Push the manifest tagged `tag` in the layout, and its blobs, to `target` (HOST/REPO:TAG).

    When the layout holds a signature for that manifest (`attach_signature`), it goes too, under
    `sha256-<hex>.sig` in the same repository, after the subject's blobs and before the subject's
    manifest: a reader that finds the tag finds its signature.
    """
    ref = Reference.parse(target)
    if ref.tag is None or ref.digest is not None:
        raise KilnError(f"{target}: publish to a tag (HOST/REPO:TAG), not a digest")
    lay = OciLayout(layout_dir)
    desc = lay.find(tag)
    sig = referrers.find(lay, desc.digest)
    reg = Registry(ref.host)
    try:
        main = _Outgoing.prepare(reg, lay, desc, ref, force)
        # a signature in the layout signs exactly this subject (checked when it was attached),
        # so it may replace another one under the tag, as a re-sign with a new key does
        signed = _Outgoing.prepare(reg, lay, sig, Reference(
            ref.host, ref.repository, sig.annotation(media.REF_NAME)), True) if sig else None
        size = chunk or _chunk_size()
        sent = main.send_blobs(reg, lay, size, progress)
        sig_push = signed.send(reg, lay, size, progress) if signed else None
        if not main.unchanged:
            reg.put_manifest(ref.repository, main.tag, main.data, desc.media_type)
    finally:
        reg.close()
    return main.result(sent, sig_push)


@dataclass
class _Outgoing:
    """One manifest on its way to a tag: its bytes, blobs and what the tag names now."""

    ref: Reference
    tag: str
    data: bytes
    blobs: list[media.Descriptor]
    existing: str | None
    digest: str

    @classmethod
    def prepare(cls, reg: Registry, lay: OciLayout, desc: media.Descriptor, ref: Reference,
                force: bool) -> _Outgoing:
        """Read the manifest and refuse (exit 5, before anything is sent) a tag that names
        other bytes, unless `force`."""
        data = lay.read_blob(desc)
        doc = json.loads(data)
        blobs = [media.Descriptor.from_json(d, str(ref))
                 for d in [doc["config"], *doc.get("layers", [])]]
        assert ref.tag is not None
        existing = reg.manifest_digest(ref.repository, ref.tag)
        if existing is not None and existing != desc.digest and not force:
            raise ConflictError(str(ref), existing, desc.digest)
        return cls(ref, ref.tag, data, blobs, existing, desc.digest)

    @property
    def unchanged(self) -> bool:
        return self.existing == self.digest

    def send_blobs(self, reg: Registry, lay: OciLayout, chunk: int | None,
                   progress: Progress | None) -> tuple[int, int, int]:
        """HEAD each blob, upload those the registry lacks: (uploaded, skipped, bytes sent)."""
        if self.unchanged:
            return 0, len(self.blobs), 0
        uploaded = skipped = sent = 0
        for blob in self.blobs:
            if reg.blob_size(self.ref.repository, blob.digest) == blob.size:
                skipped += 1
                continue
            sent += reg.upload_blob(self.ref.repository, blob.digest, blob.size,
                                    lay.blob_path(blob.digest), chunk=chunk, progress=progress)
            uploaded += 1
        return uploaded, skipped, sent

    def send(self, reg: Registry, lay: OciLayout, chunk: int | None,
             progress: Progress | None) -> OciPush:
        """Blobs, then the manifest under its tag (nothing at all when the tag names it)."""
        counts = self.send_blobs(reg, lay, chunk, progress)
        if not self.unchanged:
            reg.put_manifest(self.ref.repository, self.tag, self.data, media.MANIFEST)
        return self.result(counts, None)

    def result(self, counts: tuple[int, int, int], signature: OciPush | None) -> OciPush:
        uploaded, skipped, sent = counts
        if self.unchanged:
            return OciPush(str(self.ref), self.digest, blobs_skipped=skipped, unchanged=True,
                           signature=signature)
        return OciPush(str(self.ref), self.digest, uploaded, skipped, sent + len(self.data),
                       forced=self.existing is not None, replaced=self.existing,
                       signature=signature)


def attach_signature(layout_dir: Path, tags: list[str], dist_dir: Path) -> bool:
    """Attach the dist directory's `bundle.sig` to the manifests tagged `tags` in the layout.

    Refuses (before writing anything) a signature made for other bytes than the dist manifest,
    and a layout built from another bundle manifest than the signed one (a stale layout). False,
    and nothing written, for an unsigned bundle."""
    found = signing.oci_signature(dist_dir)
    if found is None:
        return False
    sig, media_type = found
    try:
        published = (dist_dir / names.MANIFEST).read_bytes()
    except OSError as exc:
        raise KilnError(f"{dist_dir / names.MANIFEST}: cannot read ({exc.strerror}); build the "
                        "bundle again (`kiln build`)") from None
    signing.sidecars(dist_dir, published)  # the signature is for exactly these manifest bytes
    inner = mf.dumps(mf.without_archive(mf.loads_published(published, str(dist_dir))))
    want = "sha256:" + sha256_bytes(inner)
    lay = OciLayout(layout_dir)
    for tag in tags:
        built = json.loads(lay.read_blob(lay.find(tag))).get("annotations") or {}
        if built.get(media.BUNDLE_MANIFEST) != want:
            raise KilnError(f"{layout_dir}: the {tag!r} manifest was built from another bundle "
                            f"manifest than the signed {dist_dir / names.MANIFEST}; rebuild it "
                            "(`kiln build`) before publishing")
    referrers.attach(lay, tags, sig, media_type)
    return True


def signed_layout(layout_dir: Path, tags: list[str], dist_dir: Path) -> Path | None:
    """A copy of the built layout with the dist directory's signature attached (see the module
    doc), made afresh each time and swapped into place whole; None for an unsigned bundle.

    Every file is hard-linked (a copy where links fail): the layout writes by replacing files,
    never in place, so nothing written to the copy reaches the built layout."""
    if signing.oci_signature(dist_dir) is None:
        return None
    target = layout_dir.with_name(layout_dir.name + SIGNED_SUFFIX)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(layout_dir, tmp, copy_function=_link_or_copy)
        attach_signature(tmp, tags, dist_dir)
        old = target.with_name(f".{target.name}.{os.getpid()}.old")
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _render(template: str, bundle: Bundle, version: str, backend: str) -> str:
    try:
        return template.removeprefix(SCHEME).format(name=bundle.name, version=version,
                                                    backend=backend)
    except (KeyError, IndexError, ValueError):
        raise KilnError(f"{template}: unknown placeholder in the OCI reference; use {{name}}, "
                        "{version} or {backend}") from None


def check_tested(bundle: Bundle, backend: str, digest: str) -> None:
    """The serving image published is the one the engine gate (stage imagetest) passed: a stale
    pass (a layer changed since) is refused, and so is no pass when `image.test` is required."""
    assert bundle.image is not None
    if bundle.image.test == "off":
        return
    stamp = Layout(bundle.root).stamp(bundle.name, f"imagetest-{backend}")
    if not os.path.lexists(stamp) and bundle.image.test == "auto":
        return  # never tested here (no engine): the plan said the test is skipped, and why
    doc = load_json(stamp)  # a stamp that is there but unreadable or damaged is no pass
    report = doc.get("report") if isinstance(doc, dict) else None
    tested = report.get("image_digest") if isinstance(report, dict) else None
    if tested != digest:
        raise KilnError(f"image:{bundle.name}-{backend}: the serving image {digest[:19]} has not "
                        "passed imagetest in a container engine"
                        + (f" (the last pass was {tested[:19]}: a layer changed since)"
                           if isinstance(tested, str) else "")
                        + f"; run `kiln build -t imagetest:{bundle.name}-{backend}` where an "
                        "engine answers (DOCKER_HOST), then publish")


def release_oci(bundle: Bundle, backend: str, version: str, *, to: str | None,
                force: bool = False, progress: Progress | None = None) -> OciRelease | None:
    """Push (or record) the OCI layout of one backend; None when the spec asks for no OCI."""
    layout_dir = Layout(bundle.root).oci_dir(bundle.name, version, backend)
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
    if img is not None and bundle.image is not None:
        check_tested(bundle, backend, img.digest)
    signed_dir = signed_layout(layout_dir, [MODEL_TAG] + ([IMAGE_TAG] if img else []),
                               Layout(bundle.root).dist_dir(bundle.name, version, backend))
    signed = signed_dir is not None
    layout_dir = signed_dir or layout_dir  # push (and record) the signed copy
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
            f"{local}{IMAGE_TAG}@{img.digest}" if img else None), signed)


def as_publish_result(push_: OciPush, bundle: Bundle, backend: str, version: str,
                      archive_sha256: str) -> PublishResult:
    """The artifact push in the shape every publisher reports (for `--to oci://...`)."""
    return PublishResult(destination=SCHEME + push_.reference, archive_uri=push_.pinned,
                         manifest_uri=push_.pinned, name=bundle.name, version=version,
                         backend=backend, archive_sha256=archive_sha256,
                         bytes_uploaded=push_.bytes_uploaded, unchanged=push_.unchanged,
                         forced=push_.forced, replaced=push_.replaced)
