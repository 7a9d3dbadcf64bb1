"""Store and registry integrity: symlinked versions are drift for both verifies, a damaged copy is
repaired from its verified tarball (and `publish --force` repairs instead of saying "unchanged"),
and a registry write killed mid-way leaves no temporary file behind for long."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from distfactory import make_dist
from helpers import BIN
from modelkiln import registry as R
from modelkiln.errors import DriftError, KilnError, StoreError
from modelkiln.publish.store import publish_to_store
from modelkiln.store import ModelStore
from store.store_helpers import AGENT, fork_run, killed

NAME = "registry-v3-pytorch"
WEIGHTS = "bundle/model.safetensors"


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Path]:
    """1.0.0 then 2.0.0 published into a store and recorded in a registry (2.0.0 current)."""
    root, configs = tmp_path / "store", tmp_path / "configs"
    d1 = make_dist(tmp_path, version="1.0.0", seed=1)
    d2 = make_dist(tmp_path, version="2.0.0", seed=2)
    publish_to_store(d1, root, AGENT, "1.0.0", {})
    r = publish_to_store(d2, root, AGENT, "2.0.0", {})
    R.record_discovered(R.RegistryEntry(NAME, backend="pytorch", version="2.0.0",
                                        artifacts=R.Artifacts(store=str(r.path), local=str(d2))),
                        registry_dir=configs)
    return {"root": root, "configs": configs, "d1": d1, "d2": d2, "v2": r.path}


def kiln(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "kiln"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def _flip_last_byte(path: Path) -> None:
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


# ------------------------------------------------------------------------------ symlinks
def test_version_dir_replaced_by_symlink_is_drift_for_both_verifies(world: dict[str, Path]) -> None:
    v2 = world["v2"]
    copy = v2.parent.parent / "elsewhere"
    shutil.copytree(v2, copy)
    shutil.rmtree(v2)
    os.symlink(copy, v2)
    store = ModelStore(world["root"])
    with pytest.raises(DriftError) as store_err:
        store.verify(AGENT, "2.0.0")
    with pytest.raises(DriftError) as reg_err:
        R.verify(NAME, registry_dir=world["configs"])
    for err in (store_err.value, reg_err.value):
        assert err.exit_code == 2
        assert [(c.path, c.kind) for c in err.changes] == [(".", "changed")]
        assert f"kiln store repair {AGENT} 2.0.0" in str(err)
    (info,) = [i for i in store.list_versions(AGENT) if i.version == "2.0.0"]
    assert info.problem and "symlink" in info.problem
    with pytest.raises(StoreError, match="symlink"):
        store.get_current(AGENT)
    with pytest.raises(KilnError, match="cannot lock"):
        R.lock(NAME, set_expected=True, registry_dir=world["configs"])


def test_cli_both_verifies_exit_2_on_a_symlinked_version(world: dict[str, Path]) -> None:
    v2 = world["v2"]
    shutil.copytree(v2, v2.parent.parent / "elsewhere")
    shutil.rmtree(v2)
    os.symlink(v2.parent.parent / "elsewhere", v2)
    cwd = world["root"].parent
    store = kiln("store", "--store-root", str(world["root"]), "verify", AGENT, cwd=cwd)
    reg = kiln("registry", "--registry-dir", str(world["configs"]), "verify", NAME, cwd=cwd)
    assert (store.returncode, reg.returncode) == (2, 2), store.stderr + reg.stderr
    assert "Traceback" not in store.stderr + reg.stderr


# ------------------------------------------------------------------------------- repair
def test_repair_restores_a_corrupted_copy_from_the_verified_tarball(world: dict[str, Path]) -> None:
    store = ModelStore(world["root"])
    before = (world["v2"] / "manifest.json").read_bytes()
    _flip_last_byte(world["v2"] / WEIGHTS)
    (world["v2"] / "bundle" / "extra.txt").write_bytes(b"added")
    os.unlink(world["v2"] / "bundle" / "thresholds.json")
    with pytest.raises(DriftError, match=f"kiln store repair {AGENT} 2.0.0"):
        store.verify(AGENT, "2.0.0")
    with pytest.raises(StoreError, match="published from"):  # another version's tarball
        store.repair(AGENT, "2.0.0", world["d1"] / "bundle.tar.gz")
    info = store.repair(AGENT, "2.0.0", world["d2"] / "bundle.tar.gz")
    assert not info.noop and info.current
    store.verify(AGENT, "2.0.0")
    R.verify(NAME, registry_dir=world["configs"])
    assert (world["v2"] / "manifest.json").read_bytes() == before  # same seq, same seal
    assert sorted(p.name for p in world["v2"].parent.iterdir()) == ["1.0.0", "2.0.0"]
    assert store.repair(AGENT, "2.0.0", world["d2"] / "bundle.tar.gz").noop  # intact: no-op


def test_force_publish_replaces_a_symlinked_version_with_a_real_directory(world: dict[str, Path]) -> None:
    v2 = world["v2"]
    shutil.copytree(v2, v2.parent.parent / "elsewhere")
    shutil.rmtree(v2)
    os.symlink(v2.parent.parent / "elsewhere", v2)
    forced = publish_to_store(world["d2"], world["root"], AGENT, "2.0.0", {}, force=True)
    assert not forced.noop and forced.repaired  # repaired, not "unchanged"
    assert v2.is_dir() and not v2.is_symlink()
    ModelStore(world["root"]).verify(AGENT, "2.0.0")


def test_cli_repair_finds_the_tarball_through_the_registry(world: dict[str, Path]) -> None:
    _flip_last_byte(world["v2"] / WEIGHTS)
    cwd = world["root"].parent
    args = ("store", "--store-root", str(world["root"]), "repair", AGENT,
            "--registry-dir", str(world["configs"]))
    done = kiln(*args, cwd=cwd)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"repaired {AGENT} 2.0.0 from ")
    assert kiln(*args, cwd=cwd).stdout.startswith(f"ok {AGENT} 2.0.0")


def test_cli_repair_without_a_matching_tarball_is_one_line(world: dict[str, Path],
                                                          tmp_path: Path) -> None:
    _flip_last_byte(world["v2"] / WEIGHTS)
    done = kiln("store", "--store-root", str(world["root"]), "repair", AGENT, "2.0.0", "--from",
                str(world["d1"]), cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "other bytes" in done.stderr and "--from PATH_OR_URI" in done.stderr


def test_force_publish_repairs_instead_of_saying_unchanged(world: dict[str, Path]) -> None:
    _flip_last_byte(world["v2"] / WEIGHTS)
    assert publish_to_store(world["d2"], world["root"], AGENT, "2.0.0", {}).noop  # cheap check
    forced = publish_to_store(world["d2"], world["root"], AGENT, "2.0.0", {}, force=True)
    assert not forced.noop and forced.repaired
    ModelStore(world["root"]).verify(AGENT, "2.0.0")
    again = publish_to_store(world["d2"], world["root"], AGENT, "2.0.0", {}, force=True)
    assert again.noop and not again.repaired


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_repair_killed_at_every_rename_converges(world: dict[str, Path], tmp_path: Path,
                                                 exchange: bool) -> None:
    """SIGKILL at each rename of a repair: with the atomic exchange `current` always resolves to a
    complete version (with two renames, once the next locked operation has run), and a second
    repair leaves exactly one intact 2.0.0."""
    from modelkiln.store import repair as repair_mod

    template = tmp_path / "template"
    shutil.copytree(world["root"], template, symlinks=True)
    _flip_last_byte(template / AGENT / "versions/2.0.0" / WEIGHTS)
    for k in range(1, 4):
        root = tmp_path / f"k{k}"
        shutil.copytree(template, root, symlinks=True)

        def child(root: Path = root, k: int = k) -> None:
            if not exchange:
                repair_mod._exchange = lambda a, b: False
            real, count = os.rename, [0]

            def rename(*args: object) -> None:
                count[0] += 1
                if count[0] == k:
                    os.kill(os.getpid(), signal.SIGKILL)
                real(*args)  # type: ignore[arg-type]

            os.rename = rename  # type: ignore[assignment]
            ModelStore(root).repair(AGENT, "2.0.0", world["d2"] / "bundle.tar.gz")

        status = fork_run(child)
        store = ModelStore(root)
        if not exchange:  # two renames leave a gap that the next locked operation closes
            store.recover(AGENT)
        assert store.get_current(AGENT) == root / AGENT / "versions" / "2.0.0"
        if killed(status):
            store.repair(AGENT, "2.0.0", world["d2"] / "bundle.tar.gz")
        store.verify(AGENT, "2.0.0")
        names = sorted(p.name for p in (root / AGENT / "versions").iterdir())
        assert names == ["1.0.0", "2.0.0"], names


# ------------------------------------------------------------------------------ leftovers
def test_registry_temp_files_of_a_killed_writer_are_swept(world: dict[str, Path]) -> None:
    configs = world["configs"]

    def child() -> None:
        real = os.replace

        def replace(src: object, dst: object) -> None:
            if str(dst).endswith(R.DISCOVERED):
                os.kill(os.getpid(), signal.SIGKILL)
            real(src, dst)  # type: ignore[arg-type]

        os.replace = replace  # type: ignore[assignment]
        R.lock(NAME, registry_dir=configs)

    assert killed(fork_run(child))
    assert list(configs.glob(".model_registry*.tmp"))  # what the killed writer left
    R.verify(NAME, registry_dir=configs)  # any registry write sweeps under the lock
    assert list(configs.glob(".model_registry*.tmp")) == []
    assert json.loads((configs / R.DISCOVERED).read_text())["entries"][0]["name"] == NAME
