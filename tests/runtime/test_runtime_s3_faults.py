"""Bootstrap from S3 under faults: dropped downloads, corrupt objects, the boto3 fallback path."""
from __future__ import annotations

import os
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest

from distfactory import make_dist
from modelkiln import transport
from modelkiln.artifacts import manifest as mf
from modelkiln.errors import PublishError
from modelkiln.publish import publish_bundle
from modelkiln.runtime import bootstrap
from modelkiln.transport import s3lite
from s3server import CuttingProxy

pytestmark = pytest.mark.s3
QUICK_FAIL = transport.TransferSettings(part_size=5 << 20, threshold=5 << 20, max_attempts=2,
                                    attempts=2, backoff=0.01, read_timeout=5)


def _env(uri: str, runtime: Path) -> dict[str, str]:
    return {**os.environ, "MODEL_BACKEND": "pytorch", "MODEL_BUNDLE_S3_URI_PYTORCH": uri,
            "REGISTRY_RUNTIME_DIR": str(runtime)}


def _leftovers(runtime: Path) -> list[str]:
    versions = runtime / "pytorch" / "versions"
    if not versions.exists():
        return []
    return sorted(p.name for p in versions.iterdir() if p.name.startswith("."))


def _publish(tmp_path: Path, s3: Any, version: str, seed: int, weights: int) -> tuple[Path, str]:
    dist = make_dist(tmp_path, version=version, seed=seed, weights=weights)
    return dist, publish_bundle(dist, s3.uri(f"{version}/pytorch/")).archive_uri


def test_dropped_download_is_retried_and_completes(tmp_path: Path, s3: Any, seaweedfs: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    dist, uri = _publish(tmp_path, s3, "1.0.0", 1, 12 << 20)
    proxy = CuttingProxy(int(seaweedfs.endpoint.rsplit(":", 1)[1]), after=1 << 20, cuts=3,
                         direction="down")
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    try:
        rt = bootstrap(_env(uri, tmp_path / "rt"))
    finally:
        proxy.close()
    assert proxy.cut >= 1 and rt.downloaded
    assert mf.compare_tree(rt.directory, mf.load(dist / mf.MANIFEST)) == []


def test_persistent_drops_fail_cleanly_and_keep_the_previous_version(
        tmp_path: Path, s3: Any, seaweedfs: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = tmp_path / "rt"
    _, old_uri = _publish(tmp_path, s3, "1.0.0", 1, 1000)
    old = bootstrap(_env(old_uri, runtime))
    _, uri = _publish(tmp_path, s3, "2.0.0", 2, 8 << 20)
    proxy = CuttingProxy(int(seaweedfs.endpoint.rsplit(":", 1)[1]), after=4 << 20, cuts=-1,
                         direction="down")
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    try:
        with pytest.raises(PublishError, match="download"):
            bootstrap(_env(uri, runtime), settings=QUICK_FAIL)
    finally:
        proxy.close()
    assert proxy.cut >= 2
    assert os.readlink(runtime / "pytorch" / "current") == f"versions/{old.directory.name}"
    assert _leftovers(runtime) == []  # no partial tarball, no half-extracted directory


def test_replaced_object_is_refused(tmp_path: Path, s3: Any) -> None:
    runtime = tmp_path / "rt"
    _, old_uri = _publish(tmp_path, s3, "1.0.0", 1, 1000)
    old = bootstrap(_env(old_uri, runtime))
    _other, uri = _publish(tmp_path, s3, "2.0.0", 2, 1000)
    bucket, key = transport.parse_s3(uri)
    s3.client.put_object(Bucket=bucket, Key=key, Body=b"\x1f\x8b" + os.urandom(5000))
    with pytest.raises(PublishError, match="corrupt or was replaced"):
        bootstrap(_env(uri, runtime))
    assert os.readlink(runtime / "pytorch" / "current") == f"versions/{old.directory.name}"
    assert _leftovers(runtime) == []


def test_without_env_credentials_boto3_chain_is_used(tmp_path: Path, s3: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _, uri = _publish(tmp_path, s3, "1.0.0", 1, 1000)
    creds = tmp_path / "credentials"
    creds.write_text("[default]\naws_access_key_id = test\naws_secret_access_key = test\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    bucket, key = transport.parse_s3(transport.sibling(uri, mf.MANIFEST))
    assert s3lite.get_small(bucket, key, limit=1 << 20) is None  # not for the fast path
    rt = bootstrap(_env(uri, tmp_path / "rt"))
    assert rt.downloaded and not bootstrap(_env(uri, tmp_path / "rt")).downloaded


def test_fast_path_reads_the_same_bytes_as_boto3(tmp_path: Path, s3: Any) -> None:
    dist, uri = _publish(tmp_path, s3, "1.0.0", 1, 1000)
    bucket, key = transport.parse_s3(transport.sibling(uri, mf.MANIFEST))
    assert s3lite.get_small(bucket, key, limit=1 << 20) == (dist / mf.MANIFEST).read_bytes()
    assert s3lite.get_small(bucket, key + ".missing", limit=1 << 20) is None


def test_signer_matches_the_aws_documented_example() -> None:
    """AWS S3 API reference, "Signature Calculations ... Example: GET Object"."""
    from datetime import datetime
    headers = s3lite._sign("GET", "examplebucket.s3.amazonaws.com", "/test.txt", "us-east-1",
                           {"AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
                            "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"},
                           datetime(2013, 5, 24, tzinfo=UTC), {"Range": "bytes=0-9"})
    assert headers["authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
