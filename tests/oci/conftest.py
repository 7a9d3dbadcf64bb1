"""OCI tests get one real `docker-registry` per session (tests/ociregistry.py) and a synthetic
base image pushed to it by code."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from ociregistry import DockerRegistry, find_registry, synthetic_base


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
    return synthetic_base(oci_registry.host)

