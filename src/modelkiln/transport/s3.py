"""Talking to S3 (and MinIO, SeaweedFS, ...): one client recipe, one retry policy.

Clients use boto3's standard credential chain and endpoint settings (AWS_ENDPOINT_URL,
AWS_ENDPOINT_URL_S3, AWS_PROFILE, ...), so any S3-compatible server works with no extra options.
boto3 is imported only when a client is made: a serving host that bootstraps from file:// never
pays for it.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import KilnError, PublishError

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
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return status if isinstance(status, int) else None
    return None


def error_code(exc: BaseException) -> str:
    """The S3 error code of a ClientError ('' if none)."""
    response = getattr(exc, "response", None)
    return response.get("Error", {}).get("Code", "") if isinstance(response, dict) else ""


def is_permanent(exc: BaseException) -> bool:
    """Errors no retry can fix: 4xx answers (missing, forbidden, precondition) and credentials.

    409 ConditionalRequestConflict is not one: S3 answers it while another conditional write to
    the same key is in flight, and the retry gets the real verdict (200 or 412).
    """
    status = status_of(exc)
    if status == 409 and error_code(exc) == "ConditionalRequestConflict":
        return False
    if status is not None and ((400 <= status < 500 and status not in (408, 429)) or status == 501):
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
            if is_permanent(exc):
                raise
            last = exc
            time.sleep(settings.backoff * (2 ** attempt))
    raise PublishError(f"{what}: failed after {settings.attempts} attempts ({last}); check the "
                       "network and endpoint (AWS_ENDPOINT_URL), then run the command again")
