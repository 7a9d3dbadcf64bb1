"""Publishing to S3 (and MinIO, SeaweedFS, ...): tarball first, manifest last, never overwritten.

Order and immutability, object by object:

1. `manifest.json` exists with our archive sha256: the version is already published. If the
   tarball is intact (size + `x-amz-meta-sha256`) nothing is written; if it was lost it is put
   back (same bytes, so still immutable). A manifest with another sha256 raises ConflictError
   unless force=True, which deletes the manifest first (readers then see "not published", never
   a new tarball under an old manifest) and replaces both.
2. `bundle.tar.gz` already carrying our sha256 in its metadata is an interrupted earlier run of
   these bytes: it is kept, so a re-run converges without re-sending a gigabyte. Otherwise it is
   uploaded (multipart, concurrent, a CRC32 transport checksum the server verifies per part) with
   `If-None-Match: *`, or `If-Match: <etag>` to replace exactly an uncommitted leftover.
3. `manifest.json` is written last with `If-None-Match: *`: of two racing publishers only one
   commits; the loser compares digests (same bytes: fine; different: ConflictError).

s3transfer does not pass conditional headers through, so they are added by a botocore
`before-parameter-build` hook on PutObject / CompleteMultipartUpload for the one key being written.
Servers that reject the transport checksum or conditional writes (501 / InvalidRequest) are retried
without them; the HEAD comparisons above still hold, and the bootstrap re-checks sha256 anyway.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from ..artifacts import manifest as mf
from ..artifacts.digest import sha256_bytes
from ..errors import ConflictError, KilnError, PublishError
from .. import transport
from .bundle import DistBundle, Progress, PublishResult, existing_archive_sha

Condition = dict[str, str]


class _Bucket:
    """One bucket, one client, and the conditional headers for the key being written."""

    def __init__(self, bucket: str, settings: transport.TransferSettings, client: Any = None):
        self.bucket, self.settings = bucket, settings
        self.conditional = True
        self.conditions: dict[str, Condition] = {}
        self.client = client or transport.s3_client(settings)
        self._hook(self.client)

    def _hook(self, client: Any) -> None:
        def add_condition(params: dict, **_: Any) -> None:
            if params.get("Bucket") == self.bucket and self.conditional:
                params.update(self.conditions.get(params.get("Key", ""), {}))
        for op in ("PutObject", "CompleteMultipartUpload"):
            client.meta.events.register(f"before-parameter-build.s3.{op}", add_condition,
                                        unique_id=f"modelkiln-condition-{op}")

    def drop_checksums(self) -> None:
        """Fall back to no transport checksum (a server that rejects them)."""
        self.settings = dataclasses.replace(self.settings, checksum=None)
        self.client = transport.s3_client(self.settings)
        self._hook(self.client)

    def head(self, key: str) -> dict | None:
        def call() -> dict | None:
            try:
                return self.client.head_object(Bucket=self.bucket, Key=key)
            except Exception as exc:
                if transport.status_of(exc) == 404:
                    return None
                raise
        return transport.with_retries(f"HEAD s3://{self.bucket}/{key}", call, self.settings)

    def delete(self, key: str) -> None:
        transport.with_retries(f"DELETE s3://{self.bucket}/{key}",
                           lambda: self.client.delete_object(Bucket=self.bucket, Key=key),
                           self.settings)

    def upload_file(self, bundle: DistBundle, key: str, condition: Condition,
                    progress: Progress | None) -> None:
        from boto3.s3.transfer import create_transfer_manager
        from s3transfer.subscribers import BaseSubscriber

        class Report(BaseSubscriber):  # type: ignore[misc]
            def on_progress(self, future: Any, bytes_transferred: int, **kw: Any) -> None:
                if progress:
                    progress(bytes_transferred)

        def send() -> None:
            extra: dict[str, Any] = {"Metadata": {"sha256": bundle.sha256},
                                     "ContentType": "application/gzip"}
            if self.settings.checksum:
                extra["ChecksumAlgorithm"] = self.settings.checksum
            self.conditions[key] = condition
            try:
                config = transport.transfer_config(self.settings)
                with create_transfer_manager(self.client, config) as manager:
                    manager.upload(str(bundle.archive), self.bucket, key, extra_args=extra,
                                   subscribers=[Report()]).result()
            finally:
                self.conditions.pop(key, None)
        self._fallbacks(lambda: transport.with_retries(f"upload s3://{self.bucket}/{key}", send,
                                                   self.settings))

    def put_bytes(self, key: str, data: bytes, condition: Condition) -> None:
        def send() -> None:
            extra: dict[str, Any] = {}
            if self.settings.checksum:
                extra["ChecksumAlgorithm"] = self.settings.checksum
            if self.conditional:
                extra.update(condition)
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data,
                                   ContentType="application/json",
                                   Metadata={"sha256": sha256_bytes(data)}, **extra)
        self._fallbacks(lambda: transport.with_retries(f"upload s3://{self.bucket}/{key}", send,
                                                   self.settings))

    def _fallbacks(self, action: Any) -> None:
        """Run `action`; on a server that rejects checksums or conditions, retry without them."""
        for _ in range(3):
            try:
                return action()
            except Exception as exc:
                code, status = transport.error_code(exc), transport.status_of(exc)
                message = str(exc).lower()
                rejected = status == 501 or code in ("NotImplemented", "InvalidRequest",
                                                      "InvalidArgument")
                if rejected and "checksum" in message and self.settings.checksum:
                    self.drop_checksums()
                elif rejected and self.conditional and ("match" in message or status == 501):
                    self.conditional = False
                else:
                    raise
        return action()


def _intact(head: dict | None, bundle: DistBundle) -> bool:
    """Does a HEAD answer describe exactly our tarball (size and recorded sha256)?"""
    return (head is not None and head.get("ContentLength") == bundle.size
            and head.get("Metadata", {}).get("sha256") == bundle.sha256)


def _create_or_replace(head: dict | None) -> Condition:
    """Write only if absent, or only over exactly the object we looked at."""
    return {"IfNoneMatch": "*"} if head is None else {"IfMatch": head["ETag"]}


def publish(bundle: DistBundle, destination: str, *, force: bool = False,
            progress: Progress | None = None, settings: transport.TransferSettings = transport.DEFAULT,
            client: Any = None) -> PublishResult:
    """Publish `bundle` under the s3:// prefix `destination`; see the module doc."""
    bucket, prefix = transport.parse_s3(destination)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    uri = f"s3://{bucket}/{prefix}"
    try:
        return _publish(_Bucket(bucket, settings, client), prefix, uri, bundle, force, progress)
    except KilnError:
        raise
    except Exception as exc:
        if transport.status_of(exc) == 412:
            raise PublishError(f"{uri}: another publisher wrote here at the same time; run the "
                               "command again") from None
        raise PublishError(f"{uri}: publish failed ({exc}); check credentials, the bucket and "
                           "the endpoint (AWS_ENDPOINT_URL), then run the command again") from None


def _publish(s3: _Bucket, prefix: str, uri: str, bundle: DistBundle, force: bool,
             progress: Progress | None) -> PublishResult:
    akey, mkey = prefix + mf.ARCHIVE, prefix + mf.MANIFEST
    muri = uri + mf.MANIFEST
    result = PublishResult(destination=uri, archive_uri=uri + mf.ARCHIVE, manifest_uri=muri,
                           name=bundle.name, version=bundle.version, backend=bundle.backend,
                           archive_sha256=bundle.sha256)
    replaced = None
    existing = transport.read_small(muri, client=s3.client, settings=s3.settings)
    if existing is not None:
        existing_sha = existing_archive_sha(existing, muri)
        if existing_sha == bundle.sha256:
            head = s3.head(akey)
            if _intact(head, bundle):
                return dataclasses.replace(result, unchanged=True,
                                           skipped=(mf.ARCHIVE, mf.MANIFEST))
            s3.upload_file(bundle, akey, _create_or_replace(head), progress)  # repair, same bytes
            return dataclasses.replace(result, uploaded=(mf.ARCHIVE,), skipped=(mf.MANIFEST,),
                                 bytes_uploaded=bundle.size)
        if not force:
            raise ConflictError(muri, existing_sha, bundle.sha256)
        replaced = existing_sha
        s3.delete(mkey)  # un-commit first

    uploaded, skipped, sent = [], [], 0
    head = s3.head(akey)
    if not force and _intact(head, bundle):
        skipped.append(mf.ARCHIVE)  # an interrupted run of these same bytes got this far
    else:
        try:
            s3.upload_file(bundle, akey, {} if force else _create_or_replace(head), progress)
        except Exception as exc:
            if transport.status_of(exc) != 412 or not _intact(s3.head(akey), bundle):
                raise
        uploaded.append(mf.ARCHIVE)
        sent += bundle.size

    try:
        s3.put_bytes(mkey, bundle.manifest_bytes, {} if force else {"IfNoneMatch": "*"})
    except Exception as exc:
        if transport.status_of(exc) != 412:
            raise
        other = existing_archive_sha(
            transport.read_small(muri, client=s3.client, settings=s3.settings) or b"", muri)
        if other != bundle.sha256:
            raise ConflictError(muri, other, bundle.sha256) from None
    uploaded.append(mf.MANIFEST)
    sent += len(bundle.manifest_bytes)
    if progress:
        progress(len(bundle.manifest_bytes))
    if not _intact(s3.head(akey), bundle):
        raise PublishError(f"{uri}{mf.ARCHIVE}: changed while this publish committed (another "
                           "publisher?); check the destination, then publish again with --force")
    return dataclasses.replace(result, uploaded=tuple(uploaded), skipped=tuple(skipped),
                         bytes_uploaded=sent, forced=replaced is not None, replaced=replaced)
