"""image: a packaged bundle -> an OCI image layout `dist/<name>/<version>/oci/<backend>/`.

The layout holds, tagged in its index.json:
- `model`: the bundle as a CNCF ModelPack artifact, one uncompressed layer per file;
- `image` (when the spec has an `image:` section for this backend): the serving image, assembled
  here without any engine: the base image pinned by digest, one runtime layer (our entrypoint and
  the light modelkiln package, stdlib-only, so `python3 -m modelkiln.runtime...` works inside;
  python3 and the backend's libraries come from the base), and the bundle under /opt/model/ split
  so that what changes often is small: one uncompressed layer per weight file, one for config,
  tokenizer and labels, one for thresholds, model card and the bundle manifest. A `Dockerfile`
  rendered from templates/ sits beside it and builds the same filesystem with `docker build`.

The files come from the packaged `bundle.tar.gz` (the one source of the bundle's bytes), checked
against its manifest. A blob or layer an earlier build already wrote (same digest) is hard-linked
from the previous layout, so a thresholds-only change writes only the small layers, the configs
and the manifests. No field holds a time: two clean builds give the same manifest digests.
"""
from __future__ import annotations

import hashlib
import tarfile
from functools import cache
from pathlib import Path
from typing import Any

from ..artifacts import manifest as mf
from ..artifacts import names
from ..artifacts.digest import sha256_bytes
from ..artifacts.oci import media
from ..artifacts.oci.build import BundleFile, model_artifact
from ..artifacts.oci.layout import OciLayout
from ..artifacts.oci.media import IMAGE_TAG, MODEL_TAG
from ..backends import backends
from ..errors import BuildError
from ..model.bundle import Bundle
from ..model.version import resolve
from ..paths import Layout
from ..proc import run as run_cmd
from ..resources import resource_bytes
from .base import RunContext, StagePlan, params
from .image_env import CODE_VERSION as ENV_CODE_VERSION
from .image_env import lock_path

# image_parts (the OCI transport) is imported by run(), not here: every build, a
# no-op included, imports this module to plan, and they cost it ~40 ms.

NAME = "image"
DOC = "OCI model artifact and serving image per backend (an OCI layout under dist/)"
READS: tuple[str, ...] = ("package",)
WRITES: tuple[str, ...] | None = ("oci-layout", "index.json", "blobs/sha256/*")
OPTIONAL: tuple[str, ...] = ("Dockerfile",)  # only when the image is built from one
TOOLS: tuple[str, ...] = ()
PLATFORM: str | None = None
CODE_VERSION = "3"  # 2: the environment layer, a required base, `predict` in the entrypoint;
# 3: the layout is the unsigned build; `kiln publish` signs a copy of it (publish/oci.py)
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the modelkiln package: the runtime layer


# The light modelkiln install in the image: the runtime and every layer it may import (the build
# graph, stages, publishers, spec parser and CLI stay out), so an edit to a build stage does not
# change the serving image.
RUNTIME_PARTS = ("__init__.py", "errors.py", "paths.py", "plugins.py", "proc.py", "resources.py",
                 "artifacts", "backends", "runtime", "signing", "store", "transport")


@cache
def runtime_files() -> tuple[Path, ...]:
    """The Python files of the light modelkiln install that goes into the image."""
    found: list[Path] = []
    for part in RUNTIME_PARTS:
        path = PACKAGE_DIR / part
        found.extend([path] if path.is_file() else path.rglob("*.py"))
    return tuple(sorted(p for p in found if "__pycache__" not in p.parts))


def _templates_digest() -> str:
    return sha256_bytes(resource_bytes("templates", "Dockerfile")
                        + resource_bytes("templates", "entrypoint.sh"))


def image_inputs(bundle: Bundle) -> tuple[Path, ...]:
    """Files the serving image is made from besides the bundle: modelkiln's runtime, the
    environment lock and a local base layout's index (a rebuilt base reruns the image)."""
    img = bundle.image
    assert img is not None
    extra = [lock_path(bundle)] if img.libraries == "lock" else []
    if img.base_layout is not None:
        extra.append(img.base_layout / "index.json")
    return (*runtime_files(), *extra)


def plan(bundle: Bundle, layout: Layout) -> list[StagePlan]:
    """One task per enabled backend when the spec has `publish.oci`, else one for
    `image.backend` only (a layout nothing publishes is not built); the serving image only for
    `image.backend`."""
    if bundle.image is None and bundle.publish.oci is None:
        return []
    version = resolve(bundle.version, bundle.root)
    plans = []
    for backend in bundle.backends:
        img = bundle.image if bundle.image and bundle.image.backend == backend else None
        if img is None and bundle.publish.oci is None:
            continue  # nothing publishes this backend's layout: do not build it
        what = "model artifact" + (" and serving image" if img else "")
        plans.append(StagePlan(
            task=f"image:{bundle.name}-{backend}", stage="image", bundle=bundle.name,
            doc=f"OCI {what} of {bundle.name} {version} ({backend})",
            out_dir=layout.oci_dir(bundle.name, version, backend),
            stamp=layout.stamp(bundle.name, f"image-{backend}"),
            # no signature among the inputs: signing a built bundle (`kiln sign`, a signed
            # `kiln publish`) adds to what was built and must not make it out of date; publish
            # attaches the signature to a copy of this layout (publish/oci.py, signed_layout)
            inputs=tuple(image_inputs(bundle)) if img else (),
            upstream=(f"package:{bundle.name}-{backend}",),
            params=params(CODE_VERSION, version=version, backend=backend,
                          image=None if img is None else {
                              "base": img.base, "platform": img.platform, "python": img.python,
                              "packages": list(img.packages), "libraries": img.libraries,
                              "env_code": ENV_CODE_VERSION},
                          templates=_templates_digest() if img else None),
            backend=backend, extra=(("version", version),)))
    return plans


def revision(bundle: Bundle) -> str | None:
    """The last commit that changed the spec or its inputs (stable across unrelated commits,
    the same on every clone); None outside a git checkout."""
    paths = [bundle.spec_path, bundle.source.checkpoint, bundle.source.tokenizer,
             bundle.labels.order, bundle.labels.fields, bundle.thresholds.calibration]
    done = run_cmd(["git", "log", "-1", "--format=%H", "--",
                    *sorted({str(p) for p in paths if p is not None})],
                   cwd=bundle.root, check=False, timeout=30)
    return done.stdout.strip() or None if done.returncode == 0 else None


def bundle_files(dist: Path) -> tuple[list[BundleFile], bytes]:
    """The bundle's files (from the published manifest) plus its own manifest.json's bytes."""
    published = mf.load_published(dist / mf.MANIFEST)
    inner = mf.dumps(mf.without_archive(published))
    files = [BundleFile.of(f) for f in published["files"]]
    files.append(BundleFile(names.MANIFEST, len(inner), sha256_bytes(inner)))
    return files, inner


def put_files(ctx: RunContext, lay: OciLayout, prev: OciLayout, files: list[BundleFile],
              archive: Path, inner: bytes) -> int:
    """Every bundle file as a raw blob; those not reusable are streamed out of the tarball once.
    Returns the bytes written."""
    from . import image_parts as parts

    wanted: dict[str, BundleFile] = {}
    for f in files:
        if f.path == names.MANIFEST:
            lay.put_bytes(inner, media.MODEL_WEIGHT_CONFIG_RAW)
        elif not parts.reuse_blob(ctx, prev, lay, f.digest, f.size):
            wanted[f.path] = f
    written = len(inner)
    if not wanted:
        return written
    with tarfile.open(archive, "r:gz") as tar:  # the tarball is several gzip members
        for member in tar:
            if member.name not in wanted or not member.isfile():
                continue
            f = wanted.pop(member.name)
            src = tar.extractfile(member)
            assert src is not None
            tmp = lay.blob_path(f.digest).with_name(f".{f.sha256}.part")
            h = hashlib.sha256()
            with open(tmp, "wb") as out:
                while chunk := src.read(1 << 20):
                    h.update(chunk)
                    out.write(chunk)
            if h.hexdigest() != f.sha256 or tmp.stat().st_size != f.size:
                tmp.unlink()
                raise BuildError(f"{archive}: {f.path} does not match the bundle manifest; "
                                 "the packaged bundle is damaged, rebuild it")
            lay.adopt(tmp, f.digest)
            ctx.cache.remember(lay.blob_path(f.digest), f.sha256)
            written += f.size
    if wanted:
        raise BuildError(f"{archive}: lacks {', '.join(sorted(wanted))} that its manifest lists; "
                         "rebuild the bundle")
    return written


def oci_annotations(ctx: RunContext, version: str, backend: str, bundle_manifest: str,
                kind: str) -> dict[str, str]:
    b = ctx.bundle
    notes = {media.TITLE: b.name, media.VERSION: version, media.BUNDLE_NAME: b.name,
             media.BUNDLE_BACKEND: backend, media.BUNDLE_MANIFEST: bundle_manifest,
             media.KIND: kind}
    if b.description:
        notes[media.DESCRIPTION] = b.description
    rev = revision(b)
    if rev:
        notes[media.REVISION] = rev
    return notes


def run(ctx: RunContext) -> dict[str, Any]:
    from . import image_parts as parts

    backend = ctx.plan.backend
    assert backend is not None, "image plans one task per backend"
    version = ctx.plan.get("version") or ctx.bundle.version
    dist = ctx.up("package")
    files, inner = bundle_files(dist)
    lay, prev = OciLayout(ctx.out), OciLayout(ctx.plan.out_dir)
    lay.init()
    written = put_files(ctx, lay, prev, files, dist / mf.ARCHIVE, inner)
    bundle_digest = "sha256:" + sha256_bytes(inner)
    notes = oci_annotations(ctx, version, backend, bundle_digest, MODEL_TAG)
    artifact = model_artifact(lay, files, name=ctx.bundle.name, version=version, backend=backend,
                              description=ctx.bundle.description, annotations=notes,
                              model_format=backends()[backend].FORMAT)
    refs = [_tagged(artifact, MODEL_TAG)]
    report: dict[str, Any] = {"version": version, "bundle_manifest": bundle_digest,
                              "artifact_digest": artifact.digest}
    img = ctx.bundle.image
    if img is not None and img.backend == backend:
        notes = {**notes, media.KIND: IMAGE_TAG}
        built = parts.build_image(ctx, lay, prev, img, files, notes,
                                  resource_bytes("templates", "entrypoint.sh"), runtime_entries())
        refs.append(_tagged(built.manifest, IMAGE_TAG))
        (ctx.out / "Dockerfile").write_text(built.dockerfile)
        written += built.written
        report.update(image_digest=built.manifest.digest, image_layers=built.layer_digests,
                      base=img.base)
    lay.write_index(refs)
    for digest in lay.blobs():
        ctx.cache.remember(lay.blob_path(digest), digest.split(":", 1)[1])
    report["bytes_written"] = written
    tags = ", ".join(r.annotation(media.REF_NAME) or "" for r in refs)
    ctx.log(f"image:{ctx.bundle.name}-{backend}: {tags} -> {ctx.plan.out_dir} "
            f"({written} bytes written)")
    return report


def runtime_entries() -> list[tuple[str, Path]]:
    """(path in the image, source) of the light modelkiln package."""
    return [(f"opt/modelkiln/lib/modelkiln/{p.relative_to(PACKAGE_DIR).as_posix()}", p)
            for p in runtime_files()]


def _tagged(desc: media.Descriptor, tag: str) -> media.Descriptor:
    return media.Descriptor(desc.media_type, desc.digest, desc.size, ((media.REF_NAME, tag),),
                            desc.artifact_type)


def docker_build(layout_dir: Path, tag: str) -> str:
    """Build the rendered Dockerfile with a Docker engine (the `docker` extra); returns the
    image id. Only where an engine answers; modelkiln itself never needs one."""
    import docker

    client = docker.from_env()
    image, _logs = client.images.build(path=str(layout_dir), dockerfile="Dockerfile", tag=tag,
                                       rm=True)
    return str(image.id)

