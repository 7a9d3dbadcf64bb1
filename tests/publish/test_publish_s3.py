"""Publishing to a real S3 (SeaweedFS on loopback): order, conditional writes, faults, fallbacks."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from distfactory import make_dist
from modelkiln import transport
from modelkiln.artifacts import manifest as mf
from modelkiln.errors import ConflictError, PublishError
from modelkiln.publish import DistBundle, PublishResult, TransferSettings, protocol, publish_bundle
from modelkiln.transport import bucket as bucket_mod
from s3server import CuttingProxy

pytestmark = pytest.mark.s3
MULTIPART = TransferSettings(part_size=5 << 20, threshold=5 << 20, concurrency=4)
QUICK_FAIL = TransferSettings(part_size=5 << 20, threshold=5 << 20, concurrency=2,
                              max_attempts=2, attempts=2, backoff=0.01, read_timeout=5)
BIG = 12 << 20  # three 5 MiB parts


class Recorder:
    """Every request a client sends: (operation, key, conditional headers)."""

    def __init__(self, client: Any):
        self.calls: list[tuple[str, str, str]] = []
        client.meta.events.register("before-send.s3", self._record)

    def _record(self, request: Any, event_name: str, **_: Any) -> None:
        op = event_name.rsplit(".", 1)[-1]
        key = request.url.split("?")[0].rsplit("/", 1)[-1]
        cond = ""
        for h in ("If-None-Match", "If-Match"):
            if h in request.headers:
                value = request.headers[h]
                cond = f"{h}: {value.decode() if isinstance(value, bytes) else value}"
        self.calls.append((op, key, cond))

    def writes(self) -> list[tuple[str, str, str]]:
        return [c for c in self.calls if c[0] in ("PutObject", "UploadPart",
                                                 "CompleteMultipartUpload", "DeleteObject")]


def _client(settings: TransferSettings = MULTIPART) -> tuple[Any, Recorder]:
    client = transport.s3_client(settings)
    return client, Recorder(client)


def _at(uri: str, settings: TransferSettings = MULTIPART, client: Any = None) -> Any:
    return transport.open_location(uri, settings, client)


def _publish(dist: Path, uri: str, settings: TransferSettings = MULTIPART,
             **kw: Any) -> tuple[PublishResult, Recorder]:
    client, rec = _client(settings)
    result = protocol.publish(DistBundle.load(dist), _at(uri, settings, client), **kw)
    return result, rec


def _get(s3: Any, name: str) -> bytes:
    data: bytes = s3.client.get_object(Bucket=s3.bucket, Key=s3.prefix + name)["Body"].read()
    return data


def _exists(s3: Any, name: str) -> bool:
    try:
        s3.client.head_object(Bucket=s3.bucket, Key=s3.prefix + name)
        return True
    except Exception:
        return False


def test_multipart_publish_tarball_first_manifest_last(tmp_path: Path, s3: Any) -> None:
    dist = make_dist(tmp_path, weights=BIG)
    seen: list[int] = []
    result, rec = _publish(dist, s3.uri(), progress=seen.append)
    writes = rec.writes()
    assert [w[0] for w in writes].count("UploadPart") == 3
    assert writes[0] == ("PutObject", protocol.CLAIM, "If-None-Match: *")  # claim the version
    assert writes[-3] == ("CompleteMultipartUpload", mf.ARCHIVE, "If-None-Match: *")
    assert writes[-2] == ("PutObject", mf.MANIFEST, "If-None-Match: *")  # the commit point
    assert writes[-1] == ("DeleteObject", protocol.CLAIM, "")  # released once committed
    assert not _exists(s3, protocol.CLAIM)
    assert _get(s3, mf.ARCHIVE) == (dist / mf.ARCHIVE).read_bytes()
    assert _get(s3, mf.MANIFEST) == (dist / mf.MANIFEST).read_bytes()
    head = s3.client.head_object(Bucket=s3.bucket, Key=s3.prefix + mf.ARCHIVE,
                                 ChecksumMode="ENABLED")
    assert head["Metadata"]["sha256"] == result.archive_sha256
    assert head.get("ChecksumCRC32")  # the transport checksum the server verified per part
    assert result.uploaded == (mf.ARCHIVE, mf.MANIFEST) and sum(seen) == result.bytes_uploaded


def test_publish_bundle_uses_the_standard_endpoint_settings(tmp_path: Path, s3: Any) -> None:
    dist = make_dist(tmp_path)
    result = publish_bundle(dist, s3.uri("registry/3.0.0/pytorch"))  # no trailing slash
    assert result.manifest_uri == s3.uri("registry/3.0.0/pytorch/manifest.json")
    assert s3.client.head_object(Bucket=s3.bucket, Key=s3.prefix + "registry/3.0.0/pytorch/"
                                 + mf.MANIFEST)["ContentLength"] > 0


def test_republishing_same_bytes_sends_no_content(tmp_path: Path, s3: Any) -> None:
    dist = make_dist(tmp_path, weights=BIG)
    _publish(dist, s3.uri())
    result, rec = _publish(dist, s3.uri())
    assert result.unchanged and result.bytes_uploaded == 0 and rec.writes() == []
    assert {c[0] for c in rec.calls} <= {"GetObject", "HeadObject"}


def test_different_bytes_conflict_then_force(tmp_path: Path, s3: Any) -> None:
    first, second = make_dist(tmp_path, seed=1), make_dist(tmp_path, seed=2)
    one, _ = _publish(first, s3.uri())
    with pytest.raises(ConflictError) as err:
        _publish(second, s3.uri())
    assert (err.value.existing, err.value.exit_code) == (one.archive_sha256, 5)
    assert _get(s3, mf.ARCHIVE) == (first / mf.ARCHIVE).read_bytes()
    result, rec = _publish(second, s3.uri(), force=True)
    assert result.forced and result.replaced == one.archive_sha256
    ops = [(w[0], w[1]) for w in rec.writes()]
    assert ops[:2] == [("PutObject", protocol.CLAIM), ("DeleteObject", mf.MANIFEST)]
    assert ops[-2:] == [("PutObject", mf.MANIFEST), ("DeleteObject", protocol.CLAIM)]
    assert _get(s3, mf.ARCHIVE) == (second / mf.ARCHIVE).read_bytes()


def test_interrupted_before_manifest_converges(tmp_path: Path, s3: Any,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    dist = make_dist(tmp_path, weights=BIG)
    real = bucket_mod.Bucket.put_bytes
    with monkeypatch.context() as m:
        def killed(self: Any, key: str, *a: Any, **k: Any) -> Any:
            if key == mf.MANIFEST:
                raise KeyboardInterrupt  # the process dies right before its commit
            return real(self, key, *a, **k)
        m.setattr(bucket_mod.Bucket, "put_bytes", killed)
        with pytest.raises(KeyboardInterrupt):
            _publish(dist, s3.uri())
    assert _exists(s3, mf.ARCHIVE) and not _exists(s3, mf.MANIFEST)
    assert _exists(s3, protocol.CLAIM)  # only these bytes may finish the version now
    result, rec = _publish(dist, s3.uri())
    assert result.skipped == (mf.ARCHIVE,) and result.uploaded == (mf.MANIFEST,)
    assert [w[:2] for w in rec.writes()] == [("PutObject", protocol.CLAIM),  # refused: exists
                                             ("PutObject", mf.MANIFEST),
                                             ("DeleteObject", protocol.CLAIM)]
    assert not _exists(s3, protocol.CLAIM)


def test_uncommitted_leftover_is_replaced_only_if_unchanged(tmp_path: Path, s3: Any) -> None:
    dist = make_dist(tmp_path)
    s3.client.put_object(Bucket=s3.bucket, Key=s3.prefix + mf.ARCHIVE, Body=b"other bytes")
    result, rec = _publish(dist, s3.uri())
    assert result.uploaded == (mf.ARCHIVE, mf.MANIFEST) and not result.forced
    tarball_put = [w for w in rec.writes() if w[1] == mf.ARCHIVE]
    assert tarball_put[-1][2].startswith("If-Match: ")  # replaces exactly the object it saw
    assert _get(s3, mf.ARCHIVE) == (dist / mf.ARCHIVE).read_bytes()


@pytest.mark.parametrize("same", [False, True])
def test_racing_publisher_is_caught_by_the_conditional_commit(tmp_path: Path, s3: Any,
                                                              same: bool) -> None:
    ours, theirs = make_dist(tmp_path, seed=1), make_dist(tmp_path, seed=2)
    other = ours if same else theirs
    client, _ = _client()

    def sneak_in(request: Any, **_: Any) -> None:  # the other publisher commits first
        if request.url.split("?")[0].endswith(mf.MANIFEST) and request.method == "PUT":
            s3.client.put_object(Bucket=s3.bucket, Key=s3.prefix + mf.MANIFEST,
                                 Body=(other / mf.MANIFEST).read_bytes())
    client.meta.events.register("before-send.s3.PutObject", sneak_in)
    bundle = DistBundle.load(ours)
    if same:
        assert protocol.publish(bundle, _at(s3.uri(), client=client)).uploaded[-1] == mf.MANIFEST
    else:
        with pytest.raises(ConflictError):
            protocol.publish(bundle, _at(s3.uri(), client=client))
    assert _get(s3, mf.MANIFEST) == (other / mf.MANIFEST).read_bytes()


def test_sha256_transport_checksum(tmp_path: Path, s3: Any) -> None:
    dist = make_dist(tmp_path, weights=BIG)
    settings = TransferSettings(part_size=5 << 20, threshold=5 << 20, checksum="SHA256")
    _publish(dist, s3.uri(), settings)
    head = s3.client.head_object(Bucket=s3.bucket, Key=s3.prefix + mf.ARCHIVE,
                                 ChecksumMode="ENABLED")
    assert head.get("ChecksumSHA256")


class _Refuse:
    """A before-send hook answering like a server without a feature: the fault SeaweedFS lacks."""

    def __init__(self, status: int, code: str, message: str, headers: tuple[str, ...]):
        self.status, self.code, self.message, self.headers = status, code, message, headers
        self.refused = 0

    def __call__(self, request: Any, **_: Any) -> Any:
        from botocore.awsrequest import AWSResponse
        names = [h.lower() for h in request.headers if h.lower() != "x-amz-checksum-mode"]
        if not any(h.startswith(self.headers) for h in names):
            return None
        self.refused += 1
        body = (f"<Error><Code>{self.code}</Code>"
                f"<Message>{self.message}</Message></Error>").encode()

        class Raw:
            def stream(self, **_: Any) -> Any:
                yield body
        return AWSResponse(request.url, self.status, {"Content-Type": "application/xml"}, Raw())


def _refusing_publish(dist: Path, uri: str, hook: _Refuse) -> Any:
    original = transport.s3_client  # the function transport.bucket imported

    def patched(settings: TransferSettings = transport.DEFAULT) -> Any:
        client = original(settings)
        client.meta.events.register("before-send.s3", hook)
        return client
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bucket_mod, "s3_client", patched)  # the fallback builds a new client: hook it
        return protocol.publish(DistBundle.load(dist), _at(uri))


@pytest.mark.parametrize("size", [1000, BIG])
def test_server_rejecting_checksums_falls_back(tmp_path: Path, s3: Any, size: int) -> None:
    dist = make_dist(tmp_path, weights=size)
    hook = _Refuse(400, "InvalidRequest", "x-amz-checksum-* is not supported",
                   ("x-amz-checksum", "x-amz-sdk-checksum"))
    result = _refusing_publish(dist, s3.uri(), hook)
    assert hook.refused >= 1 and result.uploaded == (mf.ARCHIVE, mf.MANIFEST)
    assert _get(s3, mf.ARCHIVE) == (dist / mf.ARCHIVE).read_bytes()


def test_server_without_conditional_writes_still_refuses_conflicts(tmp_path: Path, s3: Any) -> None:
    first, second = make_dist(tmp_path, seed=1), make_dist(tmp_path, seed=2)
    hook = _Refuse(501, "NotImplemented", "A header you provided implies functionality that is "
                   "not implemented", ("if-none-match", "if-match"))
    assert _refusing_publish(first, s3.uri(), hook).uploaded[-1] == mf.MANIFEST
    assert hook.refused >= 1
    with pytest.raises(ConflictError):  # the HEAD + sha256 comparison still guards the version
        _refusing_publish(second, s3.uri(), hook)
    assert _get(s3, mf.ARCHIVE) == (first / mf.ARCHIVE).read_bytes()


def test_dropped_connections_are_retried(tmp_path: Path, s3: Any, seaweedfs: Any,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    dist = make_dist(tmp_path, weights=BIG)
    proxy = CuttingProxy(int(seaweedfs.endpoint.rsplit(":", 1)[1]), after=1 << 20, cuts=3)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    try:
        result, _ = _publish(dist, s3.uri())
    finally:
        proxy.close()
    assert proxy.cut >= 1 and result.uploaded == (mf.ARCHIVE, mf.MANIFEST)
    assert _get(s3, mf.ARCHIVE) == (dist / mf.ARCHIVE).read_bytes()


def test_persistent_drops_fail_cleanly_without_a_manifest(tmp_path: Path, s3: Any, seaweedfs: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    dist = make_dist(tmp_path, weights=BIG)
    proxy = CuttingProxy(int(seaweedfs.endpoint.rsplit(":", 1)[1]), after=256 << 10, cuts=-1)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    try:
        with pytest.raises(PublishError, match="failed"):
            _publish(dist, s3.uri(), QUICK_FAIL)
    finally:
        proxy.close()
    assert proxy.cut >= 2 and not _exists(s3, mf.MANIFEST)


def test_killed_mid_upload_then_rerun_converges(tmp_path: Path, s3: Any, seaweedfs: Any) -> None:
    dist = make_dist(tmp_path, weights=BIG)
    proxy = CuttingProxy(int(seaweedfs.endpoint.rsplit(":", 1)[1]), after=2 << 20, cuts=-1,
                         stall=True)
    env = {**os.environ, "AWS_ENDPOINT_URL": proxy.endpoint}
    code = ("import sys; from modelkiln.publish import publish_bundle, TransferSettings; "
            "publish_bundle(sys.argv[1], sys.argv[2], "
            "settings=TransferSettings(part_size=5 << 20, threshold=5 << 20))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(dist), s3.uri()], env=env)
    try:
        deadline = time.monotonic() + 30
        while proxy.cut == 0 and time.monotonic() < deadline:  # some bytes sent, then hung
            time.sleep(0.05)
        assert proxy.cut >= 1
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        proxy.close()
    assert not _exists(s3, mf.MANIFEST)
    result, _ = _publish(dist, s3.uri())
    assert result.uploaded[-1] == mf.MANIFEST
    assert _get(s3, mf.ARCHIVE) == (dist / mf.ARCHIVE).read_bytes()
