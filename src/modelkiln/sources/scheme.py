"""What a source scheme provides, and the table of schemes.

A reader resolves a URI to a lock entry (listing, and hashing what the store gives no sha256 for)
and streams one locked file's bytes from an offset. Hashing, resuming, verifying and placing the
bytes are the fetch cache's job (`fetch`), written once for every scheme.

Readers are found through the transport scheme registry (transport.schemes): an entry
`<scheme>+source` in the modelkiln.transports entry-point group whose module has a
`source_reader()` function. modelkiln's s3, oci and hf readers register there, as a third party's
gs:// or az:// reader would.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Protocol, cast

from ..errors import KilnError
from .lockfile import LockedFile, LockEntry
from .uris import SourceUri

# write(data): the next bytes, in order; a memoryview valid only during the call (copy to keep)
Write = Callable[[bytes | memoryview], None]
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
    """The reader for a scheme, from the transport scheme registry (`<scheme>+source` entries of
    the modelkiln.transports group, where s3, oci and hf register like a third party's scheme).
    The built-in three are also found without that metadata (an install whose entry points are
    stale); their modules import boto3 or huggingface_hub only when a reader is used."""
    from ..transport import schemes

    try:
        return cast(Reader, schemes.source_reader(scheme))
    except KilnError:
        if scheme not in _BUILTIN:
            raise
    module = importlib.import_module(_BUILTIN[scheme], __package__)
    return cast(Reader, module.source_reader())


_BUILTIN = {"s3": ".s3", "oci": ".oci", "hf": ".hf"}


def builtin_scheme(scheme: str) -> bool:
    """Is `scheme` one of modelkiln's own source schemes (remote by definition)?"""
    return scheme in _BUILTIN


def builtin_module(scheme: str) -> object | None:
    """modelkiln's own source module of `scheme` (imported; it imports boto3 or
    huggingface_hub only when a reader is used), or None for any other scheme."""
    name = _BUILTIN.get(scheme)
    return importlib.import_module(name, __package__) if name else None
