"""The serving image's parts: the pinned base, our layers (reused when unchanged), the config and
the Dockerfile that describes them. Used by the `image` stage only.

Layer reuse: each layer is keyed by what decides its bytes (entry paths, modes, content digests,
compression); the key -> (digest, diff_id, size) map of the last build lives in
`.kiln/oci/<bundle>-<backend>.layers.json`. When the key is known and the previous layout still
holds that blob with that digest, it is hard-linked instead of written: an unchanged 1 GiB weights
layer costs a link, not a tar pass.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from ..artifacts import names
from ..artifacts.atomic import write_bytes
from ..artifacts.digest import sha256_bytes
from ..artifacts.oci import media
from ..artifacts.oci.build import BundleFile, image_config, is_weight
from ..artifacts.oci.layers import Entry, Layer, write_layer
from ..artifacts.oci.layout import OciLayout
from ..backends import backends
from ..model.bundle import ImageSpec
from ..resources import resource_bytes
from .base import RunContext

BUNDLE_DIR = "/opt/model"
ENTRYPOINT = "/opt/modelkiln/entrypoint.sh"
PYTHONPATH = "/opt/modelkiln/lib:/opt/modelkiln/env"  # our package, then the environment layer
BIG = 8 << 20  # files this large get their own uncompressed layer, like weights
CONFIG_FILES = (names.CONFIG, names.LABEL_ORDER, names.LABEL_FIELDS)


@dataclass(frozen=True)
class BuiltImage:
    manifest: media.Descriptor
    layer_digests: dict[str, str]  # our layer name -> digest
    dockerfile: str
    written: int


def reuse_blob(ctx: RunContext, prev: OciLayout, lay: OciLayout, digest: str, size: int) -> bool:
    """Hard-link a blob from the previous layout when it is there and still has its digest."""
    if not prev.has(digest, size):
        return False
    if ctx.cache.digest(prev.blob_path(digest)) != digest.split(":", 1)[1]:
        return False
    lay.link(prev.blob_path(digest), digest)
    return True


def env_for(backend: str, version: str, files: list[BundleFile]) -> dict[str, str]:
    """The environment `kiln bootstrap` would export, pointing into the baked-in bundle."""
    paths = {f.path for f in files}
    about = backends()[backend]  # what its runtime exports (modelkiln.backends), as bootstrap does
    env = {"MODEL_BACKEND": backend, "REGISTRY_MODEL_VERSION": version,
           "REGISTRY_BUNDLE_DIR": BUNDLE_DIR, "PYTHONPATH": PYTHONPATH}
    if about.MODEL_DIR or names.CONFIG in paths:
        env["REGISTRY_MODEL_DIR"] = BUNDLE_DIR
    for var, rel in about.EXPORTS:
        env[var] = f"{BUNDLE_DIR}/{rel}"
    env["REGISTRY_TOKENIZER_PATH"] = f"{BUNDLE_DIR}/{names.TOKENIZER_DIR}"
    env["REGISTRY_THRESHOLDS_PATH"] = f"{BUNDLE_DIR}/{names.THRESHOLDS}"
    env["REGISTRY_LABEL_FIELDS_PATH"] = f"{BUNDLE_DIR}/{names.LABEL_FIELDS}"
    if names.LABEL_ORDER in paths:
        env["REGISTRY_LABEL_ORDER_PATH"] = f"{BUNDLE_DIR}/{names.LABEL_ORDER}"
    return env


def groups(files: list[BundleFile]) -> list[tuple[str, list[BundleFile], bool]]:
    """(layer name, files, gzip?) of the bundle's layers, from least to most often changed."""
    weights = [f for f in files if is_weight(f.path) or f.size >= BIG]
    config = [f for f in files if f not in weights and (
        f.path in CONFIG_FILES or f.path.startswith(names.TOKENIZER_DIR + "/"))]
    rest = [f for f in files if f not in weights and f not in config]
    out = [(f"weights {f.path}", [f], False) for f in sorted(weights, key=lambda f: f.path)]
    return [*out, ("model config, tokenizer and labels", config, True),
            ("thresholds, model card and bundle manifest", rest, True)]


class LayerWriter:
    """Writes layers into a layout, reusing the previous build's blob for an unchanged key."""

    def __init__(self, ctx: RunContext, lay: OciLayout, prev: OciLayout):
        self.ctx, self.lay, self.prev = ctx, lay, prev
        self.path = ctx.layout.state / "oci" / f"{ctx.bundle.name}-{ctx.plan.backend}.layers.json"
        self.known: dict[str, list[Any]] = {}
        try:
            loaded = json.loads(self.path.read_bytes())
            self.known = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            pass
        self.used: dict[str, list[Any]] = {}
        self.written = 0

    def layer(self, entries: list[tuple[Entry, str]], gzip: bool) -> Layer:
        """`entries`: (entry, sha256 hex of its content)."""
        key = sha256_bytes(media.canonical(
            [gzip, sorted([e.path, e.mode, digest] for e, digest in entries)]))
        hit = self.known.get(key)
        if isinstance(hit, list) and len(hit) == 4 and \
                reuse_blob(self.ctx, self.prev, self.lay, hit[0], hit[2]):
            self.used[key] = hit
            return Layer(*hit)
        tmp = self.lay.root / "blobs" / "sha256" / f".layer-{key[:16]}.part"
        layer = write_layer(tmp, [e for e, _ in entries], gzip=gzip)
        self.lay.adopt(tmp, layer.digest)
        self.used[key] = [layer.digest, layer.diff_id, layer.size, layer.media_type]
        self.written += layer.size
        return layer

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(self.path, media.canonical(self.used), durable=False)


def build_image(ctx: RunContext, lay: OciLayout, prev: OciLayout, img: ImageSpec,
                files: list[BundleFile], notes: dict[str, str], entrypoint: bytes,
                runtime: list[tuple[str, Path]]) -> BuiltImage:
    """Assemble the serving image in `lay` (the bundle's raw blobs must already be there)."""
    from .image_base import fetch_base
    from .image_env import env_layer

    base_config, base_layers = fetch_base(ctx, lay, img)
    writer = LayerWriter(ctx, lay, prev)
    ours: list[tuple[str, Layer]] = []
    if img.libraries == "lock":  # least often changed: first, so it is shared the longest
        ours.append(("serving environment (image lock)",
                     env_layer(ctx.bundle, img, ctx.layout, lay)))
    rt = [(Entry(ENTRYPOINT.lstrip("/"), entrypoint, 0o755), sha256_bytes(entrypoint))]
    rt += [(Entry(dest, src), ctx.cache.digest(src)) for dest, src in runtime]
    ours.append(("modelkiln runtime and entrypoint", writer.layer(rt, gzip=True)))
    for name, members, gzip in groups(files):
        entries = [(Entry(f"{BUNDLE_DIR.lstrip('/')}/{f.path}", lay.blob_path(f.digest)),
                    f.sha256) for f in members]
        ours.append((name, writer.layer(entries, gzip)))
    writer.save()
    backend = ctx.plan.backend or img.backend
    env = env_for(backend, notes[media.VERSION], files)
    labels = dict(notes)
    notes = {**notes, **base_notes(img, lay)}
    config = image_config(base_config, img.platform, [layer.diff_id for _, layer in ours],
                          [f"modelkiln: {name}" for name, _ in ours], env, [ENTRYPOINT],
                          labels, BUNDLE_DIR)
    config_desc = lay.put_bytes(config, media.IMAGE_CONFIG)
    layers = [*base_layers, *(layer.descriptor() for _, layer in ours)]
    manifest = lay.put_bytes(media.manifest_bytes(config_desc, layers, notes), media.MANIFEST)
    return BuiltImage(manifest, {name: layer.digest for name, layer in ours},
                      dockerfile(ctx, img, backend, env, labels, ours),
                      writer.written + len(config))


def base_notes(img: ImageSpec, lay: OciLayout) -> dict[str, str]:
    """The base's name and manifest digest annotations (an `oci:` base: the layout's image)."""
    if img.base_layout is None:
        name, digest = img.base.split("@", 1)
        return {media.BASE_NAME: name, media.BASE_DIGEST: digest}
    src = OciLayout(img.base_layout)
    pinned = img.base.split("@", 1)[1] if "@" in img.base else None
    digest = pinned or next(d.digest for d in src.manifests()
                            if d.media_type in (media.MANIFEST, media.DOCKER_MANIFEST))
    return {media.BASE_NAME: img.base.split("@", 1)[0], media.BASE_DIGEST: digest}


def dockerfile(ctx: RunContext, img: ImageSpec, backend: str, env: dict[str, str],
               labels: dict[str, str], ours: list[tuple[str, Layer]]) -> str:
    """templates/Dockerfile filled in: one ADD per layer blob, with what the layer holds."""
    adds = []
    for name, layer in ours:
        adds.append(f"# {name}")
        adds.append(f"ADD blobs/sha256/{layer.digest.split(':', 1)[1]} /")
    template = Template(resource_bytes("templates", "Dockerfile").decode())
    return template.substitute(
        name=ctx.bundle.name, version=labels[media.VERSION], backend=backend,
        base=img.base if img.base_layout is None else
        f"{img.base}  # a local OCI layout: load it into the engine first", adds="\n".join(adds), workdir=BUNDLE_DIR,
        env=" \\\n    ".join(f"{k}={json.dumps(v)}" for k, v in env.items()),
        labels=" \\\n    ".join(f"{json.dumps(k)}={json.dumps(v)}" for k, v in labels.items()))
