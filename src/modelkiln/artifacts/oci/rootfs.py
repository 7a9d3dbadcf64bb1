"""Base images from Debian's packages: a root filesystem tarball -> a one-layer OCI image layout.

`kiln base DIR` runs `mmdebstrap` (Debian's own tool: packages from the host's apt sources,
verified by apt, reproducible under SOURCE_DATE_EPOCH) for a minimal system with python3, then
writes its tarball as one gzip layer with a fixed header (mtime 0, no name) into an OCI layout.
The same packages give the same digest; a point release of Debian gives a new one, which is why a
spec names such a base as `oci:PATH` (the layout is the pin, recorded in the image it makes) or,
once pushed, as `REGISTRY/REPO@sha256:...`.

The layout's config says which Python the base has (`org.modelkiln.python`, read from the
`usr/lib/python3.N/` directory of the filesystem), so the serving image's wheels are resolved for
that ABI, and the image stage can refuse a base without python3 before writing an image that
cannot start.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ...errors import BuildError, KilnError
from ...proc import run as run_cmd
from ..tarball import GZIP_HEADER
from . import media
from .layout import OciLayout

PYTHON_LABEL = "org.modelkiln.python"
SOURCE_DATE_EPOCH = "1735689600"  # 2025-01-01: fixed, so two runs over the same packages agree
CREATED = "2025-01-01T00:00:00Z"
_PYLIB = re.compile(r"^(?:\./)?usr/lib/python(3\.\d+)/$|^(?:\./)?usr/lib/python(3\.\d+)/os\.py$")
EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*")


def host_sources() -> str | None:
    """The host's apt sources file, handed to mmdebstrap so it uses the mirror apt already uses."""
    for candidate in ("/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"):
        if os.path.isfile(candidate) and os.path.getsize(candidate) > 0:
            return candidate
    return None


def mmdebstrap(target: Path, suite: str, include: tuple[str, ...], timeout: int = 1800) -> None:
    """A minimal Debian root filesystem as a tarball at `target` (needs root and mmdebstrap)."""
    hooks = ['rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin']
    cmd = ["mmdebstrap", "--quiet", "--mode=root", "--variant=minbase", "--format=tar",
           f"--include={','.join(include)}",
           *(f"--dpkgopt=path-exclude={x}" for x in EXCLUDES),
           *(f"--customize-hook={h}" for h in hooks), suite, str(target)]
    sources = host_sources()
    if sources:
        cmd.append(sources)
    env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH}
    if shutil.which("mmdebstrap") is None:
        raise BuildError("mmdebstrap is not installed: apt-get install mmdebstrap (it needs "
                         "root), or name a base you already have in image.base")
    run_cmd(cmd, timeout=timeout, env=env)


def _gzip(src: BinaryIO, out: BinaryIO) -> tuple[str, str, int]:
    """Deterministic gzip of `src` into `out`; returns (blob sha256, diff_id sha256, blob size)."""
    raw, blob = hashlib.sha256(), hashlib.sha256()
    comp = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS, 9)
    crc, size, written = 0, 0, 0

    def emit(data: bytes) -> None:
        nonlocal written
        if data:
            blob.update(data)
            out.write(data)
            written += len(data)

    emit(GZIP_HEADER)
    while chunk := src.read(1 << 20):
        raw.update(chunk)
        crc = zlib.crc32(chunk, crc)
        size += len(chunk)
        emit(comp.compress(chunk))
    emit(comp.flush())
    emit((crc & 0xFFFFFFFF).to_bytes(4, "little") + (size & 0xFFFFFFFF).to_bytes(4, "little"))
    return blob.hexdigest(), raw.hexdigest(), written


def python_version(members: Iterator[str]) -> str | None:
    """The Python (3.N) whose standard library a filesystem's paths hold, if any."""
    found = None
    for name in members:
        m = _PYLIB.match(name)
        if m:
            found = m.group(1) or m.group(2)
    return found


def layout_from_tar(rootfs: Path, out: Path, tag: str = "base",
                    platform: str = "linux/amd64") -> media.Descriptor:
    """Write `rootfs` (an uncompressed tarball of a root filesystem) as a one-layer image."""
    with tarfile.open(rootfs, "r:") as tar:
        python = python_version(m.name + ("/" if m.isdir() else "") for m in tar)
    if python is None:
        raise BuildError(f"{rootfs}: holds no python3 standard library (usr/lib/python3.N/); "
                         "a serving image needs python3: include it")
    lay = OciLayout(out)
    lay.init()
    tmp = lay.root / "blobs" / "sha256" / ".rootfs.part"
    with open(rootfs, "rb") as src, open(tmp, "wb") as dst:
        digest, diff_id, size = _gzip(src, dst)
    lay.adopt(tmp, "sha256:" + digest)
    os_name, arch = platform.split("/")[:2]
    config = media.canonical({
        "architecture": arch, "os": os_name, "created": CREATED,
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                           "LANG=C.UTF-8"],
                   "Cmd": ["python3"], "Labels": {PYTHON_LABEL: python}},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff_id]},
        "history": [{"created": CREATED, "created_by": f"kiln base: {rootfs.name}"}]})
    config_desc = lay.put_bytes(config, media.IMAGE_CONFIG)
    layer = media.Descriptor(media.LAYER_GZIP, "sha256:" + digest, size)
    manifest = lay.put_bytes(media.manifest_bytes(config_desc, [layer]), media.MANIFEST)
    tagged = media.Descriptor(manifest.media_type, manifest.digest, manifest.size,
                              ((media.REF_NAME, tag),))
    lay.write_index([tagged])
    return tagged


def build_debian_base(out: Path, suite: str = "bookworm",
                      include: tuple[str, ...] = ("python3", "ca-certificates")) -> str:
    """mmdebstrap + layout_from_tar; returns the image manifest's digest."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".kiln-base-", dir=out.parent) as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        mmdebstrap(rootfs, suite, include)
        return layout_from_tar(rootfs, out).digest


def base_python(config: bytes) -> str | None:
    """The Python version a base's image config declares (set by `kiln base`), if any."""
    try:
        labels = json.loads(config).get("config", {}).get("Labels") or {}
    except (ValueError, AttributeError):
        return None
    value = labels.get(PYTHON_LABEL) if isinstance(labels, dict) else None
    return value if isinstance(value, str) else None


def scan_python(layers: list[Path]) -> str | None:
    """The Python version found in a base's layers (gzip or plain tar), by their headers only."""
    found = None
    for path in layers:
        try:
            with tarfile.open(path, "r|*") as tar:
                found = python_version(
                    m.name + ("/" if m.isdir() else "") for m in tar) or found
        except (OSError, tarfile.TarError) as exc:
            raise KilnError(f"{path}: cannot read this base layer ({exc})") from None
    return found
