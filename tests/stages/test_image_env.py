"""The serving environment layer: from a hashed lock, with bytecode, byte-identical across builds.

Wheels come from the package registry as pip is configured here (nothing else is downloaded)."""
from __future__ import annotations

import hashlib
import io
import marshal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from modelkiln.artifacts.oci.layout import OciLayout
from modelkiln.model.bundle import ImageSpec
from modelkiln.stages.image_env import ENV_DIR, _build

PY = f"{sys.version_info[0]}.{sys.version_info[1]}"
IMG = ImageSpec("r/x", "r/b@sha256:" + "0" * 64, "t", "onnx", "linux/amd64", False, PY)


@pytest.fixture(scope="module")
def lock(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    where = tmp_path_factory.mktemp("wheels")
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--only-binary=:all:", "six==1.17.0", "-d", str(where)], check=True,
                   capture_output=True, timeout=300)
    (wheel,) = where.glob("six-*.whl")
    return f"six==1.17.0 --hash=sha256:{hashlib.sha256(wheel.read_bytes()).hexdigest()}\n" \
        .encode()


def _members(layer: Path) -> dict[str, bytes]:
    with tarfile.open(layer) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def test_two_builds_give_the_same_layer_with_bytecode(lock: bytes, tmp_path: Path) -> None:
    layers = []
    for i in range(2):
        cache = OciLayout(tmp_path / f"cache{i}")
        cache.init()
        layers.append((_build(lock, IMG, cache), cache))
    (first, c1), (second, _) = layers
    assert first.digest == second.digest and first.diff_id == second.diff_id
    files = _members(c1.blob_path(first.digest))
    pyc = f"{ENV_DIR.lstrip('/')}/__pycache__/six.cpython-{PY.replace('.', '')}.pyc"
    assert f"{ENV_DIR.lstrip('/')}/six.py" in files and pyc in files
    code = marshal.load(io.BytesIO(files[pyc][16:]))  # after the 16-byte header
    assert code.co_filename == f"{ENV_DIR}/six.py"  # the image's path, not this host's
    assert int.from_bytes(files[pyc][4:8], "little") & 1  # hash-based, no timestamp
    assert not any(name.split("/")[3:4] == ["bin"] for name in files)


def test_a_lock_with_a_wrong_hash_is_refused(lock: bytes, tmp_path: Path) -> None:
    from modelkiln.errors import KilnError

    cache = OciLayout(tmp_path / "c")
    cache.init()
    bad = lock.replace(lock.split(b"sha256:")[1][:8], b"00000000")
    with pytest.raises(KilnError, match="hash"):
        _build(bad, IMG, cache)
