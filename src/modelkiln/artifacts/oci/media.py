"""OCI media types, annotation keys, descriptors and the canonical JSON every manifest is written in.

A manifest's digest is the sha256 of its bytes, so the bytes must depend on nothing but the
content: keys sorted, no whitespace, UTF-8, no trailing newline, no timestamps. Two clean builds of
the same spec therefore give the same manifest digest.

The model artifact uses the CNCF ModelPack media types (`application/vnd.cncf.model.*`): each
bundle file is one `.raw` layer (the blob *is* the file, uncompressed), so the blob digest equals
the sha256 the bundle manifest already records, and a pull writes the file with no unpacking.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

# OCI image spec
INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MANIFEST_TYPES = (MANIFEST, INDEX, DOCKER_MANIFEST, DOCKER_LIST)

# CNCF ModelPack
MODEL_ARTIFACT = "application/vnd.cncf.model.manifest.v1+json"
MODEL_CONFIG = "application/vnd.cncf.model.config.v1+json"
MODEL_WEIGHT_RAW = "application/vnd.cncf.model.weight.v1.raw"
MODEL_WEIGHT_CONFIG_RAW = "application/vnd.cncf.model.weight.config.v1.raw"
MODEL_DOC_RAW = "application/vnd.cncf.model.doc.v1.raw"
FILEPATH = "org.cncf.model.filepath"

# OCI annotations (pre-defined keys) and ours
TITLE = "org.opencontainers.image.title"
VERSION = "org.opencontainers.image.version"
REVISION = "org.opencontainers.image.revision"
DESCRIPTION = "org.opencontainers.image.description"
BASE_DIGEST = "org.opencontainers.image.base.digest"
BASE_NAME = "org.opencontainers.image.base.name"
REF_NAME = "org.opencontainers.image.ref.name"
BUNDLE_MANIFEST = "dev.modelkiln.bundle.manifest.digest"
BUNDLE_NAME = "dev.modelkiln.bundle.name"
BUNDLE_BACKEND = "dev.modelkiln.bundle.backend"
KIND = "dev.modelkiln.kind"  # "model" (the artifact) or "image" (the serving image)

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


def canonical(value: object) -> bytes:
    """The bytes of a manifest, index or config: sorted keys, no spaces, UTF-8, no newline."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a manifest says about one blob."""

    media_type: str
    digest: str  # "sha256:<hex>"
    size: int
    annotations: tuple[tuple[str, str], ...] = field(default=())
    artifact_type: str | None = None
    platform: tuple[tuple[str, str], ...] = field(default=())

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"mediaType": self.media_type, "digest": self.digest,
                                  "size": self.size}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.platform:
            out["platform"] = dict(self.platform)
        return out

    @classmethod
    def from_json(cls, data: object, origin: str) -> Descriptor:
        """A descriptor read from a manifest or index; ValueError naming `origin` when malformed."""
        if not isinstance(data, dict):
            raise ValueError(f"{origin}: a descriptor must be a JSON object")
        media, digest, size = data.get("mediaType"), data.get("digest"), data.get("size")
        if not isinstance(media, str) or not isinstance(digest, str) \
                or not DIGEST_RE.match(digest) or not isinstance(size, int) or size < 0:
            raise ValueError(f"{origin}: descriptor needs mediaType, a sha256 digest and a size")
        notes = data.get("annotations") or {}
        plat = data.get("platform") or {}
        art = data.get("artifactType")
        return cls(media, digest, size,
                   tuple(sorted((str(k), str(v)) for k, v in dict(notes).items())),
                   art if isinstance(art, str) else None,
                   tuple(sorted((str(k), str(v)) for k, v in dict(plat).items()
                                if isinstance(v, str))))

    def annotation(self, key: str) -> str | None:
        return dict(self.annotations).get(key)


def manifest_bytes(config: Descriptor, layers: list[Descriptor],
                   annotations: dict[str, str] | None = None,
                   artifact_type: str | None = None) -> bytes:
    """An OCI image manifest (schemaVersion 2) in canonical JSON."""
    doc: dict[str, object] = {"schemaVersion": 2, "mediaType": MANIFEST,
                              "config": config.to_json(),
                              "layers": [d.to_json() for d in layers]}
    if artifact_type:
        doc["artifactType"] = artifact_type
    if annotations:
        doc["annotations"] = dict(sorted(annotations.items()))
    return canonical(doc)

# The tags an image task gives its two manifests in the layout's index.json.
MODEL_TAG, IMAGE_TAG = "model", "image"
