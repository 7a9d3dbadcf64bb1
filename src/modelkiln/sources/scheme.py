"""What a source scheme provides, and the table of schemes.

A reader resolves a URI to a lock entry (listing, and hashing what the store gives no sha256 for)
and streams one locked file's bytes from an offset. Hashing, resuming, verifying and placing the
bytes are the fetch cache's job (`fetch`), written once for every scheme.

The table is local until the plug-in issue's transport scheme registry exists; a reader is then
registered there under the same scheme name.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .lockfile import LockedFile, LockEntry
from .uris import SourceUri

Write = Callable[[bytes], None]
# ingest(path, size, ref, stream) -> the file as locked: stream(offset, write) sends its bytes,
# which the fetch cache hashes and keeps as they pass (used by resolvers that must hash)
Stream = Callable[[int, Write], None]
Ingest = Callable[[str, int, str, Stream], LockedFile]


class Reader(Protocol):
    def resolve(self, src: SourceUri, ingest: Ingest) -> LockEntry:
        """The source's immutable reference and files (network)."""
        ...

    def stream(self, src: SourceUri, f: LockedFile, offset: int, write: Write) -> None:
        """Send bytes [offset:] of the locked file `f` to `write`, in order; DriftError when the
        store no longer has the locked object."""
        ...


def reader(scheme: str) -> Reader:
    """The reader for a scheme (imported on first use: boto3 and huggingface_hub stay unloaded
    until a stage or `kiln lock` needs them)."""
    if scheme == "s3":
        from .s3 import S3Reader
        return S3Reader()
    if scheme == "oci":
        from .oci import OciReader
        return OciReader()
    if scheme == "hf":
        from .hf import HfReader
        return HfReader()
    raise KeyError(scheme)
