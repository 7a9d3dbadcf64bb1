"""An OCI image layout directory: `oci-layout`, `index.json` and content-addressed `blobs/sha256/`.

This is the on-disk form `skopeo copy oci:DIR:TAG ...` and `umoci` read, and the embedded default
where images and model artifacts live when no registry is named. Blobs are immutable once written
(their name is their digest), so a blob that an earlier build already wrote is hard-linked into a
new layout instead of being written again. `index.json` names each manifest with the standard
`org.opencontainers.image.ref.name` annotation (the tag).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ...errors import KilnError
from ..atomic import readable_mode
from ..digest import sha256_bytes
from . import media

LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
LAYOUT_VERSION = b'{"imageLayoutVersion":"1.0.0"}'
CHUNK = 1 << 20


def sha256_of(data: bytes) -> str:
    return "sha256:" + sha256_bytes(data)


class OciLayout:
    """One layout directory. Writers fill a fresh directory; readers check every blob they use."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def init(self) -> None:
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / LAYOUT_FILE).write_bytes(LAYOUT_VERSION)

    def blob_path(self, digest: str) -> Path:
        if not media.DIGEST_RE.match(digest):
            raise KilnError(f"{digest!r}: not a sha256 digest")
        return self.root / "blobs" / "sha256" / digest.split(":", 1)[1]

    def has(self, digest: str, size: int) -> bool:
        try:
            return self.blob_path(digest).stat().st_size == size
        except OSError:
            return False

    def put_bytes(self, data: bytes, media_type: str,
                  annotations: dict[str, str] | None = None) -> media.Descriptor:
        """Store small content (a config, a manifest) and return its descriptor."""
        digest = sha256_of(data)
        path = self.blob_path(digest)
        if not self.has(digest, len(data)):
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(data)
            os.chmod(tmp, readable_mode())
            os.replace(tmp, path)
        return media.Descriptor(media_type, digest, len(data),
                                tuple(sorted((annotations or {}).items())))

    def adopt(self, tmp: Path, digest: str) -> Path:
        """Move a blob written elsewhere in the same filesystem (already hashed) into place."""
        path = self.blob_path(digest)
        os.chmod(tmp, readable_mode())
        os.replace(tmp, path)
        return path

    def link(self, source: Path, digest: str) -> Path:
        """Put an existing file whose digest is known in as a blob: hard link, else copy."""
        path = self.blob_path(digest)
        if path.exists():
            return path
        try:
            os.link(source, path)
        except OSError:
            tmp = path.with_name(f".{path.name}.tmp")
            shutil.copyfile(source, tmp)
            self.adopt(tmp, digest)
        return path

    def write_index(self, manifests: list[media.Descriptor]) -> None:
        """index.json listing `manifests` (each carrying its ref.name annotation), written last."""
        doc = {"schemaVersion": 2, "mediaType": media.INDEX,
               "manifests": [d.to_json() for d in manifests]}
        tmp = self.root / f".{INDEX_FILE}.tmp"
        tmp.write_bytes(media.canonical(doc))
        os.chmod(tmp, readable_mode())
        os.replace(tmp, self.root / INDEX_FILE)

    def manifests(self) -> list[media.Descriptor]:
        """The descriptors index.json lists; KilnError when there is no readable layout here."""
        index = self.root / INDEX_FILE
        try:
            doc = json.loads(index.read_bytes())
            return [media.Descriptor.from_json(d, str(index)) for d in doc["manifests"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KilnError(f"{index}: not a readable OCI image layout ({exc}); build it again "
                            "with `kiln build`") from None

    def find(self, ref_name: str) -> media.Descriptor:
        """The manifest tagged `ref_name` in index.json."""
        for d in self.manifests():
            if d.annotation(media.REF_NAME) == ref_name:
                return d
        tags = sorted(filter(None, (d.annotation(media.REF_NAME) for d in self.manifests())))
        raise KilnError(f"{self.root}: no manifest tagged {ref_name!r} (tags here: "
                        f"{', '.join(tags) or 'none'})")

    def read_blob(self, desc: media.Descriptor, limit: int = 64 << 20) -> bytes:
        """A small blob's bytes, checked against the descriptor's size and digest."""
        if desc.size > limit:
            raise KilnError(f"{desc.digest}: {desc.size} bytes is too large to read into memory")
        path = self.blob_path(desc.digest)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise KilnError(f"{path}: missing blob ({exc.strerror}); build it again") from None
        if len(data) != desc.size or sha256_of(data) != desc.digest:
            raise KilnError(f"{path}: blob does not match its digest {desc.digest}; the layout "
                            "is damaged, build it again")
        return data

    def blobs(self) -> list[str]:
        """Every blob digest present (for copying a whole layout)."""
        d = self.root / "blobs" / "sha256"
        return sorted("sha256:" + p.name for p in d.iterdir() if not p.name.startswith("."))
