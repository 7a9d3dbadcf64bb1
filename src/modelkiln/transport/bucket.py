"""An s3:// prefix as a `Location`: one client, conditional writes, and fallbacks for old servers.

Conditional writes: `If-None-Match: *` / `If-Match: <etag>` on PutObject, and on the
CompleteMultipartUpload that finishes a large upload. s3transfer does not pass these headers
through, so they are added by a botocore `before-parameter-build` hook, for the one key being
written. Every object written records its sha256 as `x-amz-meta-sha256`, so `holds` is a HEAD.

Servers that reject the transport checksum or conditional writes (501 / InvalidRequest) are
retried without them; `conditional` then reads False, and conditions are no longer enforced by
the server (callers' HEAD comparisons still catch most conflicts, but not a close race).

Reads take the light path first: until something needs boto3 (a write, a HEAD, a large
download), `get_small`, a small `fetch` and `list_keys` go through `s3lite` (a stdlib-only signed
GET; importing boto3 costs a cold runner ~0.4 s), and ask boto3 only when it does not apply or
S3 answers anything but 200. The client is made on first use, not when the Bucket is.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ..artifacts.digest import HashingWriter, sha256_bytes
from ..errors import KilnError, PublishError
from . import s3lite
from .fetch import DigestMismatch, Missing, Progress, TooLarge
from .objects import ALWAYS, Condition, ObjectInfo, PreconditionFailed
from .s3 import (
    DEFAULT,
    TransferSettings,
    error_code,
    s3_client,
    status_of,
    transfer_config,
    with_retries,
)
from .uris import parse_s3

T = TypeVar("T")
SMALL_LIMIT = 64 << 20
LIGHT_FETCH = 8 << 20  # a fetch up to this size tries the stdlib-only GET before boto3
LIST_PAGE = 1000  # keys per ListObjectsV2 page (S3's maximum)


def _headers(condition: Condition) -> dict[str, str]:
    if condition.if_absent:
        return {"IfNoneMatch": "*"}
    return {"IfMatch": condition.if_match} if condition.if_match else {}


class Bucket:
    """The objects under `s3://<bucket>/<prefix>` (keys are relative to the prefix)."""

    def __init__(self, bucket: str, prefix: str = "", settings: TransferSettings = DEFAULT,
                 client: Any = None):
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        self.bucket, self.prefix, self.settings = bucket, prefix, settings
        self.conditional = True
        self._conditions: dict[str, dict[str, str]] = {}
        self._client: Any = None
        if client is not None:
            self.client = client

    @property
    def client(self) -> Any:
        """The boto3 client, made (and hooked) on first use."""
        if self._client is None:
            self.client = s3_client(self.settings)
        return self._client

    @client.setter
    def client(self, client: Any) -> None:
        self._client = client
        self._hook(client)

    @property
    def light(self) -> bool:
        """No boto3 client yet: reads try the stdlib-only path (s3lite) first."""
        return self._client is None

    @property
    def base_uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def uri(self, key: str) -> str:
        return self.base_uri + key

    # ----------------------------------------------------------------------------- plumbing
    def _hook(self, client: Any) -> None:
        def add_condition(params: dict[str, Any], **_: Any) -> None:
            if params.get("Bucket") == self.bucket and self.conditional:
                params.update(self._conditions.get(params.get("Key", ""), {}))
        for op in ("PutObject", "CompleteMultipartUpload"):
            client.meta.events.register(f"before-parameter-build.s3.{op}", add_condition,
                                        unique_id=f"modelkiln-condition-{op}")

    def _call(self, what: str, key: str, action: Callable[[], T],
              condition: Condition = ALWAYS) -> T:
        """Run `action` with retries and the fallbacks; map failures to our errors."""
        uri = self.uri(key)
        try:
            return self._fallbacks(lambda: with_retries(f"{what} {uri}", action, self.settings))
        except KilnError:
            raise
        except Exception as exc:
            if status_of(exc) == 412 and (condition.if_absent or condition.if_match):
                raise PreconditionFailed(uri, condition) from None
            raise PublishError(f"{uri}: {what} failed ({exc}); check credentials, the bucket "
                               "and the endpoint (AWS_ENDPOINT_URL), then run the command "
                               "again") from None

    def _fallbacks(self, action: Callable[[], T]) -> T:
        """Run `action`; on a server that rejects checksums or conditions, retry without them."""
        for _ in range(3):
            try:
                return action()
            except KilnError:
                raise
            except Exception as exc:
                code, status = error_code(exc), status_of(exc)
                message = str(exc).lower()
                rejected = status == 501 or code in ("NotImplemented", "InvalidRequest",
                                                      "InvalidArgument")
                if rejected and "checksum" in message and self.settings.checksum:
                    self._drop_checksums()
                elif rejected and self.conditional and ("match" in message or status == 501):
                    self.conditional = False
                else:
                    raise
        return action()

    def _drop_checksums(self) -> None:
        self.settings = dataclasses.replace(self.settings, checksum=None)
        self.client = s3_client(self.settings)

    # ----------------------------------------------------------------------------- reading
    def head(self, key: str) -> ObjectInfo | None:
        def call() -> ObjectInfo | None:
            try:
                got = self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)
            except Exception as exc:
                if status_of(exc) == 404:
                    return None
                raise
            return ObjectInfo(size=got["ContentLength"], etag=got["ETag"],
                              sha256=got.get("Metadata", {}).get("sha256"))
        return self._call("HEAD", key, call)

    def holds(self, key: str, size: int, sha256: str) -> bool:
        info = self.head(key)
        return info is not None and info.size == size and info.sha256 == sha256

    def get_small(self, key: str, limit: int = SMALL_LIMIT) -> bytes | None:
        """None when absent; TooLarge (refused, never cut) when over `limit` bytes."""
        fast = s3lite.get_small(self.bucket, self.prefix + key, limit=limit) \
            if self.light else None
        if fast is not None:
            return fast
        uri, client = self.uri(key), self.client

        def get() -> bytes | None:
            try:
                response = client.get_object(Bucket=self.bucket, Key=self.prefix + key)
            except Exception as exc:
                if status_of(exc) == 404:
                    return None
                raise
            if response["ContentLength"] > limit:
                raise TooLarge(uri, limit, "manifest or record")
            data: bytes = response["Body"].read()
            return data

        try:
            return with_retries(f"download {uri}", get, self.settings)
        except KilnError:
            raise
        except Exception as exc:
            raise PublishError(f"{uri}: cannot read ({exc}); check credentials and the "
                               "URI") from None

    def fetch(self, key: str, dest: Path, *, size: int, sha256: str,
              progress: Progress | None = None) -> None:
        """Missing when absent; DigestMismatch when the bytes differ, refused after a HEAD (or
        the light GET's Content-Length) when the size does, so no more than the size is read."""
        fast = s3lite.get_small(self.bucket, self.prefix + key, limit=size) \
            if self.light and size <= LIGHT_FETCH else None
        if fast is not None:
            dest.write_bytes(fast)
            if progress:
                progress(len(fast))
            actual = sha256_bytes(fast)
            if len(fast) != size or actual != sha256:
                dest.unlink(missing_ok=True)
                raise DigestMismatch(self.uri(key), size, len(fast), sha256, actual)
            return
        self._download(key, dest, size=size, sha256=sha256, progress=progress)

    def _download(self, key: str, dest: Path, *, size: int, sha256: str,
                  progress: Progress | None) -> None:
        """The ranged boto3 download (transport.ranged), hashing as it writes; a broken
        transfer is retried (per range, then whole), other bytes are refused at once."""
        from .ranged import s3_download

        uri, client = self.uri(key), self.client

        def fetch_once() -> tuple[int, str]:
            with open(dest, "wb") as raw:
                writer = HashingWriter(raw)
                s3_download(client, self.bucket, self.prefix + key, writer, size=size,
                            settings=self.settings, progress=progress)
            return writer.size, writer.hexdigest()

        try:
            got, actual = with_retries(f"download {uri}", fetch_once, self.settings)
        except KilnError:
            dest.unlink(missing_ok=True)
            raise
        except Exception as exc:
            dest.unlink(missing_ok=True)
            if status_of(exc) == 404:
                raise Missing(uri) from None
            if isinstance(exc, OSError) and exc.strerror:
                raise PublishError(f"{uri}: cannot read or write ({exc.strerror}: "
                                   f"{exc.filename or dest}); check permissions and free "
                                   "space") from None
            raise PublishError(f"{uri}: download failed ({exc})") from None
        if got != size or actual != sha256:
            dest.unlink(missing_ok=True)
            raise DigestMismatch(uri, size, got, sha256, actual)

    def list_keys(self, prefix: str = "") -> list[str]:
        fast = s3lite.list_keys(self.bucket, self.prefix + prefix, page=LIST_PAGE) \
            if self.light else None
        if fast is not None:
            return sorted(k[len(self.prefix):] for k in fast)

        def pages() -> list[str]:
            keys: list[str] = []
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix,
                                           PaginationConfig={"PageSize": LIST_PAGE}):
                keys.extend(o["Key"][len(self.prefix):] for o in page.get("Contents", []))
            return keys
        return sorted(self._call("LIST", prefix, pages))

    # ----------------------------------------------------------------------------- writing
    def put_bytes(self, key: str, data: bytes, condition: Condition = ALWAYS, *,
                  content_type: str = "application/json") -> ObjectInfo:
        digest = sha256_bytes(data)

        def send() -> ObjectInfo:
            extra: dict[str, Any] = {}
            if self.settings.checksum:
                extra["ChecksumAlgorithm"] = self.settings.checksum
            if self.conditional:
                extra.update(_headers(condition))
            got = self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data,
                                         ContentType=content_type, Metadata={"sha256": digest},
                                         **extra)
            return ObjectInfo(size=len(data), etag=got["ETag"], sha256=digest)
        return self._call("upload", key, send, condition)

    def upload_file(self, key: str, path: Path, *, size: int, sha256: str,
                    condition: Condition = ALWAYS, progress: Progress | None = None,
                    content_type: str = "application/octet-stream") -> ObjectInfo:
        """Multipart past `settings.threshold`, parts concurrent, each verified by the server's
        transport checksum; `progress` may receive a negative count when a part is retried."""
        from boto3.s3.transfer import create_transfer_manager
        from s3transfer.subscribers import BaseSubscriber

        class Report(BaseSubscriber):  # type: ignore[misc]
            def on_progress(self, future: Any, bytes_transferred: int, **kw: Any) -> None:
                if progress:
                    progress(bytes_transferred)

        full = self.prefix + key

        def send() -> None:
            extra: dict[str, Any] = {"Metadata": {"sha256": sha256}, "ContentType": content_type}
            if self.settings.checksum:
                extra["ChecksumAlgorithm"] = self.settings.checksum
            self._conditions[full] = _headers(condition)
            try:
                with create_transfer_manager(self.client, transfer_config(self.settings)) as tm:
                    tm.upload(str(path), self.bucket, full, extra_args=extra,
                              subscribers=[Report()]).result()
            finally:
                self._conditions.pop(full, None)
        self._call("upload", key, send, condition)
        info = self.head(key)
        if info is None:  # a read-after-write miss: S3 is strongly consistent, say so plainly
            raise PublishError(f"{self.uri(key)}: missing right after its upload; check the "
                               "endpoint, then run the command again")
        return info

    def delete(self, key: str) -> None:
        self._call("DELETE", key,
                   lambda: self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key))

    def clean_stale(self) -> None:
        """Nothing to do here: a bucket lifecycle rule (AbortIncompleteMultipartUpload) removes
        the parts of uploads a killed writer never completed."""


def open_location(uri: str, settings: TransferSettings = DEFAULT, client: Any = None) -> Bucket:
    """The transport registry's entry for s3:// URIs (transport.schemes); boto3 is imported
    when the client is made, not before."""
    name, prefix = parse_s3(uri)
    return Bucket(name, prefix, settings, client)
