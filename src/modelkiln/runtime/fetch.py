"""Read published objects from s3:// or file:// locations, with retries, checking what arrives.

Shared by the runtime bootstrap (downloads) and the S3 publisher (client, URIs, transfer
settings), so both sides speak to S3 the same way. boto3 is imported only when an s3:// location
is actually used: a serving host that bootstraps from file:// never pays for it, and one that
bootstraps from S3 pays once, lazily.

S3 clients use boto3's standard credential chain and endpoint settings (AWS_ENDPOINT_URL,
AWS_ENDPOINT_URL_S3, AWS_PROFILE, ...), so MinIO and SeaweedFS work with no extra options.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import unquote, urlsplit

from ..artifacts.digest import HashingWriter
from ..errors import KilnError, PublishError

Progress = Callable[[int], None]
T = TypeVar("T")
MIB = 1 << 20


@dataclass(frozen=True)
class TransferSettings:
    """Knobs for S3 transfers; the defaults are `aws s3 cp`'s (8 MiB parts, 10 at a time).

    `attempts` is our own retry loop around a whole transfer (botocore and s3transfer also retry
    single requests and parts `max_attempts` times underneath). `checksum` is the transport
    checksum the server verifies per request or part ("CRC32", "SHA256", or None).
    """

    part_size: int = 8 * MIB
    threshold: int = 8 * MIB
    concurrency: int = 10
    max_attempts: int = 5
    attempts: int = 3
    backoff: float = 0.5
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    checksum: str | None = "CRC32"


DEFAULT = TransferSettings()


def scheme_of(uri: str) -> str:
    """'s3', 'file' (also for plain paths) or whatever else the URI names."""
    if "://" not in uri:
        return "file"
    return uri.split("://", 1)[0].lower()


def local_path(uri: str) -> Path:
    """The path a file:// URI or a plain path names (made absolute)."""
    if "://" not in uri:
        return Path(uri).expanduser().absolute()
    parts = urlsplit(uri)
    if parts.scheme.lower() != "file" or parts.netloc not in ("", "localhost"):
        raise KilnError(f"{uri}: not a local file:// URI; write file:///absolute/path")
    return Path(unquote(parts.path))


def parse_s3(uri: str) -> tuple[str, str]:
    """(bucket, key) of an s3://bucket/key URI; the key may be empty or end with '/'."""
    if not uri.startswith("s3://"):
        raise KilnError(f"{uri}: not an s3:// URI; write s3://bucket/prefix/")
    bucket, _, key = uri[5:].partition("/")
    if not bucket:
        raise KilnError(f"{uri}: no bucket name; write s3://bucket/prefix/")
    return bucket, key


def sibling(uri: str, name: str) -> str:
    """The URI of `name` in the same "directory" as `uri` (or inside it when it ends with '/')."""
    return uri[: uri.rfind("/") + 1] + name


def s3_client(settings: TransferSettings = DEFAULT) -> Any:
    """A boto3 S3 client with standard retries and the transport checksum policy of `settings`."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise KilnError("s3:// needs boto3; install it with `pip install modelkiln[s3]`") from None
    config = Config(
        retries={"mode": "standard", "max_attempts": settings.max_attempts},
        max_pool_connections=max(10, settings.concurrency + 2),
        connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout,
        tcp_keepalive=True,
        request_checksum_calculation="when_supported" if settings.checksum else "when_required",
    )
    return boto3.session.Session().client("s3", config=config)


def transfer_config(settings: TransferSettings) -> Any:
    """boto3's TransferConfig for `settings` (multipart size, threshold, concurrency)."""
    from boto3.s3.transfer import TransferConfig
    return TransferConfig(multipart_threshold=settings.threshold,
                          multipart_chunksize=settings.part_size,
                          max_concurrency=settings.concurrency, use_threads=True,
                          num_download_attempts=settings.max_attempts)


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of a botocore ClientError (or of what caused an exception), else None."""
    for e in (exc, exc.__cause__, getattr(exc, "last_exception", None)):
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            return response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return None


def error_code(exc: BaseException) -> str:
    """The S3 error code of a ClientError ('' if none)."""
    response = getattr(exc, "response", None)
    return response.get("Error", {}).get("Code", "") if isinstance(response, dict) else ""


def _permanent(exc: BaseException) -> bool:
    """Errors no retry can fix: 4xx answers (missing, forbidden, precondition) and credentials."""
    status = status_of(exc)
    if status is not None and (400 <= status < 500 and status not in (408, 429) or status == 501):
        return True
    return type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError",
                                  "ParamValidationError", "NoRegionError")


def with_retries(what: str, action: Callable[[], T], settings: TransferSettings = DEFAULT) -> T:
    """Run `action`, retrying transient failures with backoff; PublishError when they persist.

    KilnErrors (our own verdicts) and permanent S3 answers pass straight through.
    """
    last: BaseException | None = None
    for attempt in range(settings.attempts):
        try:
            return action()
        except KilnError:
            raise
        except Exception as exc:  # botocore, s3transfer, urllib3 and socket errors alike
            if _permanent(exc):
                raise
            last = exc
            time.sleep(settings.backoff * (2 ** attempt))
    raise PublishError(f"{what}: failed after {settings.attempts} attempts ({last}); check the "
                       "network and endpoint (AWS_ENDPOINT_URL), then run the command again")


def read_small(uri: str, *, limit: int = 64 * MIB, client: Any = None,
               settings: TransferSettings = DEFAULT) -> bytes | None:
    """The bytes of a small object (a manifest), or None when it does not exist.

    Without a `client`, an s3:// read first tries `s3lite` (no boto3 import: the cached
    bootstrap's 0.5 s budget), and falls back to boto3 for anything but a plain 200.
    """
    if scheme_of(uri) == "file":
        path = local_path(uri)
        try:
            if path.stat().st_size > limit:
                raise KilnError(f"{uri}: larger than {limit} bytes; not a manifest")
            return path.read_bytes()
        except FileNotFoundError:
            return None
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
            raise KilnError(f"{uri}: larger than {limit} bytes; not a manifest")
        return response["Body"].read()

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

    The digest is computed as the bytes are written (one pass, see `download.py`). A transfer
    that breaks is retried (per range, then whole); bytes that arrive intact but differ from the
    manifest are refused at once: re-downloading a corrupt object only repeats the corruption.
    """
    def fetch_once() -> tuple[int, str]:
        with open(dest, "wb") as raw:
            writer = HashingWriter(raw)
            if scheme_of(uri) == "file":
                _copy(local_path(uri), writer, progress)
            else:
                from .download import s3_download
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
            raise PublishError(f"{uri}: not found; check MODEL_BUNDLE_S3_URI_* and that the "
                               "version was published") from None
        raise PublishError(f"{uri}: download failed ({exc})") from None
    if got != size or actual != sha256:
        dest.unlink(missing_ok=True)
        raise PublishError(f"{uri}: {got} bytes with sha256 {actual}, but the published manifest "
                           f"says {size} bytes with {sha256}; the object is corrupt or was "
                           "replaced, refusing it (re-publish the bundle, then bootstrap again)")


def _copy(src: Path, out: HashingWriter, progress: Progress | None) -> None:
    """Copy a local file through `out` in 256 KiB chunks (see download.PIECE), with progress."""
    with open(src, "rb") as fin:
        while chunk := fin.read(256 << 10):
            out.write(chunk)
            if progress:
                progress(len(chunk))
