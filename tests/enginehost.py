"""The container engine and the Debian base the serving-image tests need.

`.ci/run` starts dockerd (its own socket, data-root and exec-root; no iptables, no bridge) and
exports DOCKER_HOST; it also makes the base's root filesystem once with mmdebstrap from Debian's
packages and exports KILN_TEST_BASE_TAR. Here, outside CI, a missing engine or base is a skip
with the reason; under CI (CI=true) it is a failure: the tests that need them must run there.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

BASE_TAR_ENV = "KILN_TEST_BASE_TAR"


def _missing(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why}: .ci/run provides it, so this is a broken CI setup, not a skip")
    pytest.skip(why)


def engine_client() -> Any:
    """A docker SDK client for DOCKER_HOST that answers a ping, or skip/fail."""
    docker = pytest.importorskip("docker", reason="the docker SDK (`docker` extra) is not installed")
    try:
        client = docker.from_env(timeout=300)
        client.ping()
    except Exception as exc:
        _missing(f"no container engine answers at DOCKER_HOST={os.environ.get('DOCKER_HOST')} "
                 f"({type(exc).__name__})")
    return client


def base_rootfs(cache: Path) -> Path:
    """The Debian root filesystem tarball: $KILN_TEST_BASE_TAR, else made here by mmdebstrap."""
    given = os.environ.get(BASE_TAR_ENV)
    if given and Path(given).is_file():
        return Path(given)
    if shutil.which("mmdebstrap") is None or os.geteuid() != 0:
        _missing(f"no Debian base: set {BASE_TAR_ENV} or run as root with mmdebstrap installed")
    from modelkiln.artifacts.oci.rootfs import mmdebstrap

    target = cache / "base.tar"
    mmdebstrap(target, "bookworm", ("python3", "ca-certificates"))
    return target


def docker_cli() -> str | None:
    return shutil.which("docker")


def run_cli(*args: str, stdin: bytes = b"", timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
    """The docker CLI against DOCKER_HOST, as a user would run it."""
    cli = docker_cli()
    assert cli is not None
    return subprocess.run([cli, *args], input=stdin, capture_output=True, timeout=timeout)
