"""A real OCI registry for the tests: Debian's `docker-registry` (distribution 2.8) on loopback.

`DockerRegistry` writes a minimal config (filesystem storage in a temp dir, deletes enabled), starts
`docker-registry serve` on a free port, waits until `/v2/` answers and stops it at the end.
`blob_file` finds a blob in the registry's storage, so a test can tamper with it as an attacker
with disk access would. `synthetic_base` pushes a small base image made by code (nothing is
downloaded) and returns its digest-pinned reference.
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import signal
import socket
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path


def need(tool: str) -> str:
    """Path of a Debian tool the test needs; skips the test (naming the package) where absent."""
    import pytest

    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} not installed (apt-get install {tool})")
    return path


def find_registry() -> str | None:
    return shutil.which("docker-registry")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DockerRegistry:
    def __init__(self, binary: str, root: Path):
        self.binary, self.root = binary, root
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        self.port = _free_port()
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "config.yml"
        config.write_text(
            "version: 0.1\nlog: {level: error}\n"
            f"storage: {{filesystem: {{rootdirectory: {self.root / 'data'}}}, "
            "delete: {enabled: true}}\n"
            f"http: {{addr: {self.host}}}\n")
        log = open(self.root / "registry.log", "wb")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen([self.binary, "serve", str(config)], stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited {self.proc.returncode}; see {log.name}")
            try:
                with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"docker-registry not ready after {timeout}s; see {log.name}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def blob_file(self, digest: str) -> Path:
        hexd = digest.split(":", 1)[1]
        return (self.root / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexd[:2]
                / hexd / "data")


def _tar(files: dict[str, tuple[bytes, int]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, (data, mode) in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def synthetic_base(host: str, repo: str = "base/python") -> str:
    """Push a two-layer base image (a fake `python3` and an os-release) built in memory; return
    `HOST/REPO@sha256:...`. Stands in for a real base: nothing is downloaded."""
    from modelkiln.transport.oci import Registry

    layers = [_tar({"usr/bin/python3": (b"#!/bin/sh\necho fake python3 \"$@\"\n", 0o755),
                    "usr/lib/python3.11/os.py": (b"# the image stage looks for a stdlib\n", 0o644)}),
              _tar({"etc/os-release": (b"ID=synthetic\n", 0o644)})]
    digests = ["sha256:" + hashlib.sha256(b).hexdigest() for b in layers]
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"],
                   "Cmd": ["python3"]},
        "rootfs": {"type": "layers", "diff_ids": digests},
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "synthetic layer"}] * 2,
    }, sort_keys=True).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d,
                    "size": len(b)} for d, b in zip(digests, layers, strict=True)],
    }, sort_keys=True).encode()
    reg = Registry(host)
    try:
        for digest, blob in [(config_digest, config), *zip(digests, layers, strict=True)]:
            reg.upload_blob(repo, digest, len(blob), blob)
        digest = reg.put_manifest(repo, "3.11", manifest,
                                  "application/vnd.oci.image.manifest.v1+json")
    finally:
        reg.close()
    return f"{host}/{repo}@{digest}"
