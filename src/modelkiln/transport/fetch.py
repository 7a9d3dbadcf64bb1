"""Reading published objects from any scheme's location, checking what arrives.

Shared by the runtime bootstrap and the publishers: a small object (a manifest) by `read_small`,
a large one (a tarball) by `download`, which hashes while it writes and refuses bytes that differ
from what the manifest promised.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import KilnError, PublishError
from .s3 import DEFAULT, MIB, TransferSettings

if TYPE_CHECKING:  # objects.py imports this module
    from .objects import Location

Progress = Callable[[int], None]


class BadObject(PublishError):
    """One object that cannot be used as asked, though the transport works: absent where a
    checked fetch wanted it, other bytes than expected, or not an object its writer could have
    stored. A caller that can do without it (the action cache: "mismatch = miss") treats any of
    these as a miss of that one entry; every other exception is a failure of the transport."""


class Missing(BadObject):
    """A checked fetch of a key that is not there."""

    def __init__(self, uri: str, hint: str = "check the URI and that it was published"):
        self.uri = uri
        super().__init__(f"{uri}: not found; {hint}")


class Unusable(BadObject):
    """An entry that is there but cannot be what a writer stored: not a regular file, reached
    through a symlink below the location, or over the reader's bound. Refused without being read
    (a FIFO would block, a device stream forever)."""

    def __init__(self, uri: str, why: str):
        self.uri = uri
        super().__init__(f"{uri}: {why}")


class TooLarge(Unusable):
    """A small object over the size its reader accepts for it, refused before it is read."""

    def __init__(self, uri: str, limit: int, what: str):
        self.limit, self.what = limit, what
        super().__init__(uri, f"larger than {limit} bytes; not a {what}")


class DigestMismatch(BadObject):
    """Bytes that arrived intact but differ in size or sha256 from the ones expected: the object
    is corrupt or was replaced. Callers that hold a signature for the expected bytes re-word it
    as a signature refusal. `sha256` / `actual` are None where the size alone already differed."""

    def __init__(self, uri: str, size: int, got: int, sha256: str | None = None,
                 actual: str | None = None):
        self.uri, self.size, self.got, self.sha256, self.actual = uri, size, got, sha256, actual
        have = f"{got} bytes with sha256 {actual}" if actual else f"{got} bytes"
        said = f"{size} bytes with {sha256}" if sha256 else f"{size}"
        super().__init__(f"{uri}: {have}, but the published manifest says {said}; the object is "
                         "corrupt or was replaced, refusing it (re-publish the bundle, then "
                         "bootstrap again)")


def read_small(uri: str, *, limit: int = 64 * MIB, client: Any = None,
               settings: TransferSettings = DEFAULT, what: str = "manifest") -> bytes | None:
    """The bytes of a small object (a manifest), or None when it does not exist; TooLarge
    (naming `what` the object should have been) when it is over `limit` bytes.

    Read through the Location of the URI's scheme (transport.schemes), strictly: a file://
    object must be a regular file (a FIFO or device is refused, never waited on). An s3://
    Location without a `client` first tries `s3lite` (no boto3 import: the cached bootstrap's
    0.5 s budget), and falls back to boto3 for anything but a plain 200.
    """
    place, name = _place(uri, settings, client)
    try:
        return place.get_small(name, limit)
    except TooLarge as exc:
        raise TooLarge(exc.uri, limit, what) from None


def download(uri: str, dest: Path, *, size: int, sha256: str, progress: Progress | None = None,
             client: Any = None, settings: TransferSettings = DEFAULT,
             durable: bool = False) -> None:
    """Fetch `uri` into the new file `dest` and check it has exactly `size` bytes and `sha256`,
    through the Location of the URI's scheme (its `fetch`: transport.schemes).

    `dest` is not fsynced unless `durable`: the bootstrap unpacks and deletes it, and fsyncs
    what it unpacks instead, so flushing a GiB it is about to delete would only cost time.

    The digest is computed as the bytes are written (one pass, see `ranged.py`). A transfer
    that breaks is retried (per range, then whole); bytes that arrive intact but differ from the
    manifest are refused at once: re-downloading a corrupt object only repeats the corruption.
    """
    place, name = _place(uri, settings, client)
    try:
        place.fetch(name, dest, size=size, sha256=sha256, progress=progress)
        if durable:
            fd = os.open(dest, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    except Missing:
        dest.unlink(missing_ok=True)
        raise Missing(uri, "check MODEL_BUNDLE_S3_URI_* and that the version was "
                      "published") from None
    except KilnError:
        dest.unlink(missing_ok=True)
        raise
    except OSError as exc:
        dest.unlink(missing_ok=True)
        raise PublishError(f"{uri}: cannot read or write ({exc.strerror or exc}: "
                           f"{exc.filename or dest}); check permissions and free space") from None


def _place(uri: str, settings: TransferSettings, client: Any) -> tuple[Location, str]:
    """(the Location of the URI's "directory", the object's name in it), from the transport
    registered for its scheme (transport.schemes). `client`: an S3 client to reuse (s3://)."""
    from .schemes import open_location

    cut = uri.rfind("/") + 1
    return open_location(uri[:cut], settings, client), uri[cut:]
