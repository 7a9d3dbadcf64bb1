"""`kiln store` and `kiln registry` take their location options before or after the subcommand,
and a location that cannot be one is an error, never an empty listing (the real `kiln`, in a
subprocess, on a store and registry made by the publish code)."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from distfactory import make_dist
from helpers import BIN
from modelkiln import registry as R
from modelkiln.publish.store import publish_to_store

NAME = "registry-v3-onnx"


def kiln(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(BIN / "kiln"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})
    assert "Traceback" not in done.stderr, done.stderr
    return done


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Path]:
    """registry 3.0.0 in a store, its entry in a registry (no local dist recorded)."""
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / R.CURATED).write_text(json.dumps({"schema_version": 1, "entries": [
        {"name": NAME, "backend": "onnx", "served_model_id": "registry-v3"}]}))
    dist = make_dist(tmp_path, version="3.0.0", backend="onnx", seed=3, weights=2_000)
    r = publish_to_store(dist, tmp_path / "store", "registry", "3.0.0", {})
    R.record_discovered(R.RegistryEntry(NAME, backend="onnx", version="3.0.0",
                                        artifacts=R.Artifacts(store=str(r.path))),
                        registry_dir=configs)
    work = tmp_path / "elsewhere"  # no configs/ or model-store/ here: only the options count
    work.mkdir()
    return {"configs": configs, "store": tmp_path / "store", "version": r.path, "cwd": work}


def test_location_options_work_before_and_after_the_subcommand(world: dict[str, Path]) -> None:
    store, configs, cwd = str(world["store"]), str(world["configs"]), world["cwd"]
    for args in (("store", "list", "--store-root", store),
                 ("store", "--store-root", store, "list")):
        done = kiln(*args, cwd=cwd)
        assert (done.returncode, done.stdout) == (0, "registry\n"), done.stderr
    done = kiln("store", "verify", "registry", "--store-root", store, cwd=cwd)
    assert done.returncode == 0 and done.stdout.startswith("ok registry 3.0.0"), done.stderr
    for args in (("registry", "list", "--registry-dir", configs),
                 ("registry", "--registry-dir", configs, "list")):
        done = kiln(*args, cwd=cwd)
        assert done.returncode == 0 and done.stdout.startswith(NAME), done.stderr
    done = kiln("registry", "select", NAME, "--registry-dir", configs, cwd=cwd)
    assert done.returncode == 0 and f"name={NAME}\n" in done.stdout, done.stderr


def _one_line(done: subprocess.CompletedProcess[str], code: int, start: str) -> None:
    assert done.returncode == code, (done.returncode, done.stderr)
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith(start), done.stderr


def test_a_location_that_is_not_a_directory_is_an_error(world: dict[str, Path],
                                                         tmp_path: Path) -> None:
    cwd, configs = world["cwd"], str(world["configs"])
    afile = tmp_path / "afile"
    afile.write_text("not a store\n")
    _one_line(kiln("registry", "--registry-dir", str(tmp_path / "nonexistent"), "list", cwd=cwd),
              64, f"kiln: --registry-dir {tmp_path / 'nonexistent'}: no such directory")
    _one_line(kiln("registry", "select", NAME, "--registry-dir", str(afile), cwd=cwd),
              64, f"kiln: --registry-dir {afile}: not a directory")
    _one_line(kiln("store", "--store-root", str(afile), "list", cwd=cwd),
              64, f"kiln: --store-root {afile}: not a directory")
    _one_line(kiln("store", "list", "--store-root", str(tmp_path / "typo"), cwd=cwd),
              64, f"kiln: --store-root {tmp_path / 'typo'}: no such directory")
    # a file where the environment says the store is: an I/O failure of the setup (1)
    _one_line(kiln("store", "list", cwd=cwd, MODEL_STORE_ROOT=str(afile)),
              1, f"kiln: {afile} (the store root")
    # prune with a registry that is not there would protect nothing: refused, nothing removed
    _one_line(kiln("store", "prune", "registry", "--keep", "0", "--store-root",
                   str(world["store"]), "--registry-dir", str(tmp_path / "nope"), cwd=cwd),
              64, f"kiln: --registry-dir {tmp_path / 'nope'}: no such directory")
    assert world["version"].is_dir()
    # the defaults may be absent: nothing published here yet is an empty listing
    assert kiln("registry", "list", cwd=cwd).returncode == 0
    assert kiln("store", "list", cwd=cwd, MODEL_STORE_ROOT="").returncode == 0
    assert kiln("registry", "list", "--registry-dir", configs, cwd=cwd).returncode == 0


def test_store_current_names_an_agent_that_is_not_there(world: dict[str, Path]) -> None:
    store, cwd = str(world["store"]), world["cwd"]
    done = kiln("store", "current", "nope", "--store-root", store, cwd=cwd)
    _one_line(done, 1, f"kiln: nope: no such agent in model store {store}")
    assert "publish one" not in done.stderr and "`kiln store list`" in done.stderr
    done = kiln("store", "current", "registri", "--store-root", store, cwd=cwd)
    assert done.returncode == 1 and "did you mean 'registry'?" in done.stderr
    _one_line(kiln("store", "list", "nope", "--store-root", store, cwd=cwd),
              1, "kiln: nope: no such agent")
    done = kiln("store", "current", "registry", "--store-root", store, cwd=cwd)
    assert (done.returncode, done.stdout) == (0, f"{world['version']}\n")


def test_registry_select_leaves_out_keys_without_a_value(world: dict[str, Path]) -> None:
    done = kiln("registry", "select", NAME, "--registry-dir", str(world["configs"]),
                cwd=world["cwd"])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert f"store={world['version']}" in lines and f"name={NAME}" in lines
    assert not [line for line in lines if line.endswith("=")], lines
    assert not [line for line in lines if line.startswith(("local=", "s3=", "capabilities="))]


def test_the_drift_hint_names_the_entry(world: dict[str, Path]) -> None:
    victim = next(p for p in sorted((world["version"] / "bundle").rglob("*")) if p.is_file())
    victim.write_bytes(victim.read_bytes() + b"x")
    done = kiln("registry", "verify", NAME, "--registry-dir", str(world["configs"]),
                cwd=world["cwd"])
    assert done.returncode == 2, done.stderr
    assert f"`kiln registry lock {NAME} --set-expected`" in done.stderr
    assert "NAME" not in done.stderr
    assert "`kiln store repair registry 3.0.0`" in done.stderr


def test_read_commands_answer_in_json(world: dict[str, Path]) -> None:
    """--json on the store and registry read commands: the same facts as the text lines."""
    store, configs, cwd = str(world["store"]), str(world["configs"]), world["cwd"]

    def js(*args: str) -> object:
        done = kiln(*args, "--json", cwd=cwd)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    assert js("store", "list", "--store-root", store) == ["registry"]
    versions = js("store", "list", "registry", "--store-root", store)
    assert isinstance(versions, list) and versions[0]["version"] == "3.0.0"
    assert versions[0]["current"] is True and versions[0]["checksum"]
    assert js("store", "current", "registry", "--store-root", store) == {
        "agent": "registry", "path": str(world["version"])}
    verified = js("store", "verify", "registry", "--store-root", store)
    assert isinstance(verified, dict) and verified["checksum"] == versions[0]["checksum"]
    selected = js("registry", "select", NAME, "--registry-dir", configs)
    assert isinstance(selected, dict) and selected["store"] == str(world["version"])
    assert selected["local"] is None  # JSON says "no value" as null, not as an empty string
    checked = js("registry", "verify", NAME, "--registry-dir", configs)
    assert isinstance(checked, dict) and checked["name"] == NAME and checked["aggregate_sha256"]
