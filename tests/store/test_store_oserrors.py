"""Permissions and OS errors, for real: a store and registry written by root are read by `nobody`
(a serving process under another uid); unreadable files are "cannot read" (exit 1), never drift;
a full disk (a 2 MiB tmpfs) is one line naming the path, with nothing half-visible."""
from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TypedDict

import pytest

from distfactory import make_dist
from helpers import BIN
from modelkiln import registry as R
from modelkiln.errors import KilnError
from modelkiln.publish.store import publish_to_store
from modelkiln.store import ModelStore
from store.store_helpers import AGENT

NAME = "registry-v3-pytorch"
IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="switching to another uid and mounting a "
                                "tmpfs need root (the test container runs as root)")


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Path]:
    """A directory every user can traverse (pytest's own tmp_path is 0700), written under the
    usual umask 022."""
    d = Path(tempfile.mkdtemp(prefix="kiln-shared-", dir="/tmp"))
    os.chmod(d, 0o755)
    old = os.umask(0o022)
    try:
        yield d
    finally:
        os.umask(old)
        shutil.rmtree(d, ignore_errors=True)


_RUN_CLI = "import sys; from modelkiln.cli import main; sys.exit(main(sys.argv[1:]))"
class _Credentials(TypedDict):
    user: str
    group: str
    extra_groups: list[str]


_NOBODY: _Credentials = {"user": "nobody", "group": "nogroup", "extra_groups": []}


def _python_for_nobody() -> str:
    """An interpreter `nobody` may execute: this one when its path is open to others, else the
    system's python of the same minor version (the venv's packages are ABI-compatible with it)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, f"/usr/bin/{version}", shutil.which(version)):
        try:
            if candidate and subprocess.run([candidate, "-c", "pass"], capture_output=True,
                                            **_NOBODY).returncode == 0:
                return candidate
        except PermissionError:
            continue
    pytest.skip(f"no {version} that the user nobody may execute")


def as_nobody(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`kiln ARGS` in a separate process running as the user nobody."""
    site = [p for p in sys.path if p.endswith("site-packages")]
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"), *site])}
    return subprocess.run([_python_for_nobody(), "-c", _RUN_CLI, *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, env=env,
                          **_NOBODY)


def publish_world(base: Path) -> tuple[Path, Path]:
    root, configs = base / "store", base / "configs"
    dist = make_dist(base / "work", version="1.0.0", seed=1)
    r = publish_to_store(dist, root, AGENT, "1.0.0", {})
    R.record_discovered(R.RegistryEntry(NAME, backend="pytorch", version="1.0.0",
                                        artifacts=R.Artifacts(store=str(r.path))),
                        registry_dir=configs)
    return root, configs


@needs_root
def test_another_user_reads_what_root_published(shared: Path) -> None:
    root, configs = publish_world(shared)
    for f in [*root.rglob("*"), *configs.iterdir()]:
        if f.is_file() and not f.name.startswith("."):
            assert f.stat().st_mode & 0o044 == 0o044, f"{f} is not readable by group and others"
    verify = as_nobody("store", "--store-root", str(root), "verify", AGENT, cwd=shared)
    assert verify.returncode == 0, verify.stderr
    listed = as_nobody("registry", "--registry-dir", str(configs), "list", cwd=shared)
    assert listed.returncode == 0 and NAME in listed.stdout, listed.stderr
    # nobody may not write configs/: the verdict is still reported, with a warning
    reg = as_nobody("registry", "--registry-dir", str(configs), "verify", NAME, cwd=shared)
    assert reg.returncode == 0 and reg.stdout.startswith(f"ok {NAME}"), reg.stderr
    assert "last_verified not written" in reg.stderr and "Traceback" not in reg.stderr


@needs_root
def test_unreadable_file_is_cannot_read_never_drift(shared: Path) -> None:
    root, configs = publish_world(shared)
    weights = root / AGENT / "versions" / "1.0.0" / "bundle" / "model.safetensors"
    os.chmod(weights, 0o000)
    for args in (("store", "--store-root", str(root), "verify", AGENT),
                 ("registry", "--registry-dir", str(configs), "verify", NAME)):
        done = as_nobody(*args, cwd=shared)
        assert done.returncode == 1, (args, done.stderr)
        assert "drift" not in done.stderr and "Traceback" not in done.stderr
        assert str(weights) in done.stderr and "Permission denied" in done.stderr
    os.chmod(weights, 0o644)
    os.chmod(root / AGENT / "versions" / "1.0.0" / "manifest.json", 0o600)
    done = as_nobody("store", "--store-root", str(root), "verify", AGENT, cwd=shared)
    assert done.returncode == 1 and "drift" not in done.stderr, done.stderr


def test_verdict_survives_an_unwritable_registry(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The same without another uid: the discovered layer cannot be replaced (EROFS)."""
    _root, configs = publish_world(tmp_path)
    layers = importlib.import_module("modelkiln.registry.layers")

    def refuse(path: Path, data: bytes, durable: bool = True) -> None:
        raise OSError(30, "Read-only file system", str(path))

    monkeypatch.setattr(layers, "write_bytes", refuse)
    result = R.verify(NAME, registry_dir=configs)
    assert result.not_recorded and "Read-only file system" in result.not_recorded
    assert "writable" in result.not_recorded


# ----------------------------------------------------------------------------- full disk
@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB tmpfs: writes past it fail with ENOSPC from the kernel."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the campaign's mock "
                    "of os.write covers this case")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@needs_root
def test_disk_full_publish_is_one_line_and_leaves_nothing_visible(tiny_fs: Path,
                                                                   tmp_path: Path) -> None:
    small = make_dist(tmp_path, version="1.0.0", seed=1, weights=200_000)
    big = make_dist(tmp_path, version="2.0.0", seed=2, weights=3_000_000)
    root = tiny_fs / "store"
    publish_to_store(small, root, AGENT, "1.0.0", {})
    with pytest.raises(KilnError) as err:
        publish_to_store(big, root, AGENT, "2.0.0", {})
    message = str(err.value)
    assert "No space left on device" in message and "\n" not in message
    store = ModelStore(root)
    assert store.current_version(AGENT) == "1.0.0"
    assert [i.version for i in store.list_versions(AGENT)] == ["1.0.0"]
    assert sorted(p.name for p in (root / AGENT / "versions").iterdir()) == ["1.0.0"]
    store.verify(AGENT, "1.0.0")


@needs_root
def test_disk_full_registry_write_is_one_line_and_keeps_the_old_file(tiny_fs: Path,
                                                                     tmp_path: Path) -> None:
    _root, configs = publish_world(tmp_path)
    shutil.copytree(configs, tiny_fs / "configs")
    configs = tiny_fs / "configs"
    before = (configs / R.DISCOVERED).read_bytes()
    filler = tiny_fs / "filler"
    with open(filler, "wb") as f, pytest.raises(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    entry = R.RegistryEntry("another-" + "x" * 4000, backend="pytorch", version="9.9.9")
    with pytest.raises(KilnError) as err:
        R.record_discovered(entry, registry_dir=configs)
    assert "No space left on device" in str(err.value) and str(configs) in str(err.value)
    assert (configs / R.DISCOVERED).read_bytes() == before
    assert list(configs.glob(".model_registry*.tmp")) == []
    filler.unlink()
    done = subprocess.run([str(BIN / "kiln"), "registry", "--registry-dir", str(configs), "list",
                           "--include-non-installed"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and NAME in done.stdout
