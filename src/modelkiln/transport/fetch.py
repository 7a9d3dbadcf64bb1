"""Reading published objects from s3:// or file:// locations, checking what arrives.

Shared by the runtime bootstrap and the publishers: a small object (a manifest) by `read_small`,
a large one (a tarball) by `download`, which hashes while it writes and refuses bytes that differ
from what the manifest promised.
"""
from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..artifacts.digest import HashingWriter
from ..errors import KilnError, PublishError
from .s3 import DEFAULT, MIB, TransferSettings, s3_client, status_of, with_retries
from .uris import local_path, parse_s3, scheme_of

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

    Without a `client`, an s3:// read first tries `s3lite` (no boto3 import: the cached
    bootstrap's 0.5 s budget), and falls back to boto3 for anything but a plain 200.
    """
    if scheme_of(uri) == "file":
        return _read_local(local_path(uri), uri, limit, what)
    if scheme_of(uri) != "s3":  # a plug-in scheme: through its Location
        place, name = _plugin_place(uri, settings)
        return place.get_small(name, limit)
    bucket, key = parse_s3(uri)
    if client is None:  # nobody paid for boto3 yet: try the stdlib-only signed GET first
        from .s3lite import get_small
        fast = get_small(bucket, key, limit=limit)
        if fast is not None:
            return fast
    client = client or s3_client(settings)

    def get() -> bytes | None:
        try:
            response = client.get_object(Bucket=bucket, Key=key)
        except Exception as exc:
            if status_of(exc) == 404:
                return None
            raise
        if response["ContentLength"] > limit:
            raise TooLarge(uri, limit, what)
        data: bytes = response["Body"].read()
        return data

    try:
        return with_retries(f"download {uri}", get, settings)
    except KilnError:
        raise
    except Exception as exc:
        raise PublishError(f"{uri}: cannot read ({exc}); check credentials and the URI") from None


def download(uri: str, dest: Path, *, size: int, sha256: str, progress: Progress | None = None,
             client: Any = None, settings: TransferSettings = DEFAULT,
             durable: bool = False) -> None:
    """Fetch `uri` into the new file `dest` and check it has exactly `size` bytes and `sha256`.

    `dest` is not fsynced unless `durable`: the bootstrap unpacks and deletes it, and fsyncs
    what it unpacks instead, so flushing a GiB it is about to delete would only cost time.

    The digest is computed as the bytes are written (one pass, see `ranged.py`). A transfer
    that breaks is retried (per range, then whole); bytes that arrive intact but differ from the
    manifest are refused at once: re-downloading a corrupt object only repeats the corruption.
    """
    if scheme_of(uri) not in ("file", "s3"):  # a plug-in scheme: through its Location
        place, name = _plugin_place(uri, settings)
        place.fetch(name, dest, size=size, sha256=sha256, progress=progress)
        return

    def fetch_once() -> tuple[int, str]:
        with open(dest, "wb") as raw:
            writer = HashingWriter(raw)
            if scheme_of(uri) == "file":
                _copy(local_path(uri), writer, progress)
            else:
                from .ranged import s3_download
                bucket, key = parse_s3(uri)
                s3_download(s3, bucket, key, writer, size=size, settings=settings,
                            progress=progress)
            if durable:
                raw.flush()
                os.fsync(raw.fileno())
        return writer.size, writer.hexdigest()

    s3 = None if scheme_of(uri) == "file" else (client or s3_client(settings))
    try:
        got, actual = with_retries(f"download {uri}", fetch_once, settings)
    except KilnError:
        dest.unlink(missing_ok=True)
        raise
    except Exception as exc:
        dest.unlink(missing_ok=True)
        if status_of(exc) == 404 or isinstance(exc, FileNotFoundError):
            raise Missing(uri, "check MODEL_BUNDLE_S3_URI_* and that the version was "
                          "published") from None
        if isinstance(exc, OSError) and exc.strerror:
            raise PublishError(f"{uri}: cannot read or write ({exc.strerror}: "
                               f"{exc.filename or dest}); check permissions and free space") from None
        raise PublishError(f"{uri}: download failed ({exc})") from None
    if got != size or actual != sha256:
        dest.unlink(missing_ok=True)
        raise DigestMismatch(uri, size, got, sha256, actual)


def _plugin_place(uri: str, settings: TransferSettings) -> tuple[Location, str]:
    """(the Location of the URI's "directory", the object's name in it) for a scheme a plug-in
    transport serves (transport.schemes); its `fetch` checks size and sha256 as `download` does."""
    from .schemes import open_location

    cut = uri.rfind("/") + 1
    return open_location(uri[:cut], settings), uri[cut:]


def _copy(src: Path, out: HashingWriter, progress: Progress | None) -> None:
    """Copy a local file through `out` in 256 KiB chunks (see ranged.PIECE), with progress."""
    with open(src, "rb") as fin:
        while chunk := fin.read(256 << 10):
            out.write(chunk)
            if progress:
                progress(len(chunk))


def _read_local(path: Path, uri: str, limit: int, what: str) -> bytes | None:
    """A small file of a file:// destination: regular files only (opened without blocking, so a
    FIFO planted where a manifest belongs is refused instead of waiting for a writer forever),
    at most `limit` bytes (a device or a file growing while read is over the limit, not read on)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PublishError(f"{path}: cannot read ({exc.strerror or exc}); check that this "
                           "user may read it (published files are world-readable unless "
                           "the publisher's umask says otherwise)") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PublishError(f"{path}: not a regular file, so not a published {what}; "
                               "re-publish the bundle")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(uri, limit, what)
    return data
