"""oci://HOST/REPO@sha256:... sources: a ModelPack model artifact, as `kiln publish` pushes one.

Each file of such an artifact is one raw layer whose blob *is* the file, named by its
`org.cncf.model.filepath` (or `org.opencontainers.image.title`) annotation, so the manifest alone
gives every file's path, size and sha256: locking reads one manifest and no blob. Layers without a
file name (a packed tarball) are not files of a checkpoint and are left out.
"""
from __future__ import annotations

import json
import re
from typing import Any

from ..artifacts.oci import media
from ..errors import KilnError, PublishError
from ..transport.oci import Registry
from .lockfile import LockedFile, LockEntry, safe_rel
from .scheme import Ingest, Write
from .uris import BadSourceUri, SourceUri

_URI = re.compile(r"^oci://(?P<host>[^/@]+)/(?P<repo>[a-z0-9][a-z0-9._/-]*)"
                  r"@(?P<digest>sha256:[0-9a-f]{64})(?:/(?P<sub>[\w./-]+?))?/?$")


class _Skip:
    """A writer that drops the first `skip` bytes (a resumed blob: the registry sends it whole)."""

    def __init__(self, skip: int, write: Write):
        self.skip, self._write = skip, write

    def write(self, data: Any) -> int:
        data = bytes(data)
        if self.skip:
            cut = min(self.skip, len(data))
            self.skip -= cut
            data = data[cut:]
        if data:
            self._write(data)
        return len(data)


class OciReader:
    def resolve(self, src: SourceUri, ingest: Ingest) -> LockEntry:
        reg = Registry(src.where)
        try:
            raw, _kind, digest = reg.get_manifest(src.path, src.pin)
        finally:
            reg.close()
        doc = json.loads(raw)
        files = []
        for layer in doc.get("layers") or []:
            notes = layer.get("annotations") or {}
            path = notes.get(media.FILEPATH) or notes.get(media.TITLE)
            if not isinstance(path, str) or not safe_rel(path):
                continue
            if src.sub:
                if not path.startswith(src.sub.rstrip("/") + "/"):
                    continue
                path = path[len(src.sub.rstrip("/")) + 1:]
            dig = layer.get("digest", "")
            if not media.DIGEST_RE.match(dig) or not isinstance(layer.get("size"), int):
                raise KilnError(f"{src.uri}: layer {path!r} has no usable digest and size")
            files.append(LockedFile(path, layer["size"], dig[7:], dig))
        if not files:
            raise KilnError(f"{src.uri}: the manifest names no files (no layer carries "
                            f"{media.FILEPATH}); point at a model artifact `kiln publish` pushed")
        return LockEntry(src.uri, digest, tuple(sorted(files, key=lambda f: f.path)))

    def stream(self, src: SourceUri, f: LockedFile, offset: int, write: Write) -> None:
        from .fetch import drift

        reg = Registry(src.where)
        try:
            reg.get_blob(src.path, f"sha256:{f.sha256}", f.size, _Skip(offset, write))  # type: ignore[arg-type]
        except PublishError as exc:
            if "404" in str(exc) or "digest" in str(exc):
                raise drift(src.uri, f, "changed", str(exc)[:160]) from None
            raise
        finally:
            reg.close()


def parse_source_uri(text: str) -> SourceUri:
    """oci://HOST/REPO@sha256:<digest>[/folder]: pinned, since a tag moves; sources.uris.parse."""
    m = _URI.match(text)
    if m is None:
        raise BadSourceUri(text, "an OCI source must be pinned by its manifest digest",
                           "write oci://HOST/REPO@sha256:<64 hex>[/folder] (a tag can move; "
                           "`kiln publish` prints the digest it pushed)")
    return SourceUri(text, "oci", m["host"], m["repo"], m["digest"], m["sub"] or "")


def source_reader() -> OciReader:
    """This scheme's reader, for the transport scheme registry (`oci+source`)."""
    return OciReader()
