"""A container engine (dockerd, or podman's docker-compatible service) driven by the docker SDK:
load an image from our OCI layout, run `predict` in it with no network, read its answers.

Loading: the engine is handed a docker-archive (`docker save` format: manifest.json, the config,
the layer blobs) streamed from the layout's own blobs, so the engine runs exactly the image the
layout holds (its config digest is the image id the engine reports; checked). An engine of 20.10
does not load OCI layouts itself, and this needs no skopeo.

Running: the container gets stdin attached; rows are written and stdin closed, and stdout/stderr
come back over the same connection in the engine's multiplexed frames (8-byte header: stream,
size). The time from start to the first answer line is the image's start-up figure. Every wait has
a deadline; the container is removed whatever happens. `docker` is imported here only.
"""
from __future__ import annotations

import io
import json
import os
import socket
import struct
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..artifacts.oci import media
from ..artifacts.oci.layout import OciLayout
from ..errors import BuildError

DEFAULT_SOCKET = "/var/run/docker.sock"


def engine_hint(environ: dict[str, str] | None = None) -> str | None:
    """Why no engine can answer here (a cheap look, for planning), or None when one may."""
    env = os.environ if environ is None else environ
    host = env.get("DOCKER_HOST", "")
    if host and not host.startswith("unix://"):
        return None  # tcp:// or ssh://: only trying tells
    path = urlparse(host).path if host else DEFAULT_SOCKET
    if not os.path.exists(path):
        return (f"no container engine: DOCKER_HOST is {host or 'unset'} and {path} does not "
                "exist (start dockerd or `podman system service`, or set image.test: off)")
    return None


def client(timeout: int = 120) -> Any:
    """A docker SDK client for DOCKER_HOST; BuildError (one line) when none answers."""
    try:
        import docker
    except ImportError:
        raise BuildError("the image test needs the docker SDK: pip install 'modelkiln[docker]'") \
            from None
    try:
        c = docker.from_env(timeout=timeout)
        c.ping()
    except Exception as exc:
        raise BuildError(f"no container engine answers at {os.environ.get('DOCKER_HOST') or DEFAULT_SOCKET}"
                         f" ({type(exc).__name__}); start one or set image.test: off") from None
    return c


def docker_archive(layout: Path, tag: str, repo_tag: str, out: Path) -> str:
    """Write the layout's image `tag` as a docker-archive at `out`; returns the config digest."""
    lay = OciLayout(layout)
    doc = json.loads(lay.read_blob(lay.find(tag)))
    config = media.Descriptor.from_json(doc["config"], str(layout))
    layers = [media.Descriptor.from_json(d, str(layout)) for d in doc["layers"]]
    names = [f"blobs/sha256/{d.hex}" for d in layers]
    manifest = json.dumps([{"Config": f"blobs/sha256/{config.hex}", "RepoTags": [repo_tag],
                            "Layers": names}]).encode()
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for desc in (config, *layers):
            name = f"blobs/sha256/{desc.hex}"
            if name in tar.getnames():
                continue
            tar.add(lay.blob_path(desc.digest), arcname=name)
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
    return config.digest


def load(engine: Any, layout: Path, tag: str, repo_tag: str) -> str:
    """Load the layout's image into the engine as `repo_tag`; returns its id (config digest)."""
    with tempfile.TemporaryDirectory(prefix="kiln-load-") as tmp:
        archive = Path(tmp) / "image.tar"
        digest = docker_archive(layout, tag, repo_tag, archive)
        with open(archive, "rb") as data:
            try:
                engine.api.load_image(data)
            except Exception as exc:
                raise BuildError(f"the engine refused the image: {str(exc)[:300]}") from None
    image = engine.images.get(repo_tag)
    if image.id != digest:
        raise BuildError(f"the engine loaded {image.id} for {repo_tag}, not the layout's "
                         f"{digest}; it did not run the image that was built")
    return str(image.id)


@dataclass(frozen=True)
class Ran:
    status: int
    stdout: str
    stderr: str
    first_answer_s: float | None  # start to the first complete stdout line
    total_s: float


def _frames(sock: Any, deadline: float) -> Any:
    """(stream, bytes) frames of an attached, non-TTY container until EOF."""
    buf = b""
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        chunk = sock.recv(1 << 16)
        if not chunk:
            return
        buf += chunk
        while len(buf) >= 8:
            kind, size = buf[0], struct.unpack(">I", buf[4:8])[0]
            if len(buf) < 8 + size:
                break
            yield kind, buf[8:8 + size]
            buf = buf[8 + size:]


def run(engine: Any, image: str, args: list[str], stdin: bytes, timeout: float = 300,
        environment: dict[str, str] | None = None,
        mounts: dict[str, str] | None = None) -> Ran:
    """Run `image` with `args` (network none), feed `stdin`, collect output; remove it after.
    `mounts`: host directory -> path in the container, bound read-only."""
    api = engine.api
    binds = {host: {"bind": dest, "mode": "ro"} for host, dest in (mounts or {}).items()}
    container = api.create_container(
        image, command=args, stdin_open=True, environment=environment or {}, use_config_proxy=False,
        host_config=api.create_host_config(network_mode="none", binds=binds or None))["Id"]
    try:
        attached = api.attach_socket(container, params={"stdin": 1, "stdout": 1, "stderr": 1,
                                                        "stream": 1})
        sock: socket.socket = getattr(attached, "_sock", attached)
        start = time.monotonic()
        api.start(container)

        def feed() -> None:
            try:
                sock.sendall(stdin)
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the container exited early; its status and stderr say why

        writer = threading.Thread(target=feed, daemon=True)
        writer.start()
        out, err, first = bytearray(), bytearray(), None
        try:
            for kind, data in _frames(sock, start + timeout):
                (out if kind == 1 else err).extend(data)
                if first is None and b"\n" in out:
                    first = time.monotonic() - start
        except TimeoutError:
            raise BuildError(f"the container gave no end of output within {timeout:.0f} s") \
                from None
        status = api.wait(container, timeout=max(1, int(start + timeout - time.monotonic())))
        total = time.monotonic() - start
        sock.close()
        return Ran(int(status.get("StatusCode", -1)), out.decode(errors="replace"),
                   err.decode(errors="replace"), first, total)
    finally:
        try:
            api.remove_container(container, force=True)
        except Exception:
            pass  # already gone; nothing of ours is left to clean
