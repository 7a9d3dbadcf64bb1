"""Prune racing publish: a `kiln store prune` that runs while a publish re-publishes an older version
(a store no-op) must never leave the registry naming a removed version.

The prune is started from inside the publish, at the worst instant: after the store said "already
there" and before the registry records it. Publish holds the store's agent lock through that
window, so the prune waits, then finds the version named by the registry and keeps it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from distfactory import make_dist
from helpers import BIN, make_project
from modelkiln import registry as R
from modelkiln.api import load_bundles
from modelkiln.publish import release as rel
from modelkiln.store import ModelStore

pytestmark = pytest.mark.slow

STORE = """\
publish:
  store: {root: "${MODEL_STORE_ROOT}", agent: tiny}
"""


def test_prune_started_inside_a_noop_publish_keeps_what_the_registry_names(
        tmp_path: Path, tiny_inputs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = make_project(tmp_path / "p", tiny_inputs)
    project.spec.write_text(project.spec.read_text() + STORE)
    store_root, configs = tmp_path / "store", project.root / "configs"
    monkeypatch.setenv("MODEL_STORE_ROOT", str(store_root))
    monkeypatch.setenv("KILN_REGISTRY_DIR", str(configs))
    monkeypatch.setenv("KILN_PUBLISH_URI", (tmp_path / "pub").as_uri() + "/{version}/{backend}/")

    def publish(version: str) -> rel.Release:
        spec = project.spec.read_text()
        project.spec.write_text(spec.replace(spec.split('version: "')[1].split('"')[0], version, 1))
        dist = project.root / "dist" / "tiny" / version / "pytorch"
        if not dist.exists():
            made = make_dist(tmp_path / "made", name="tiny", version=version, seed=len(version)
                             + int(version.split(".")[1]))
            shutil.copytree(made, dist)
        (bundle,) = load_bundles([project.spec])
        return rel.release(bundle, "pytorch")

    for v in ("9.4.0", "9.5.0", "9.6.0"):
        publish(v)
    prune = [str(BIN / "kiln"), "store", "--store-root", str(store_root), "prune", "tiny",
             "--keep", "1"]
    outcome: dict[str, Any] = {}
    real_record = R.record_discovered  # what release imported from the registry

    def record_with_prune_racing(entry: R.RegistryEntry, **kw: Any) -> R.RegistryEntry:
        child = subprocess.Popen(prune, cwd=project.root, env=os.environ.copy(),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            child.wait(timeout=5)  # unfixed: the prune runs to the end right here
        except subprocess.TimeoutExpired:
            pass  # fixed: it waits for the store lock this publish holds
        outcome["child"] = child
        return real_record(entry, **kw)

    monkeypatch.setattr(rel, "record_discovered", record_with_prune_racing)
    again = publish("9.5.0")
    out, err = outcome["child"].communicate(timeout=60)
    assert outcome["child"].returncode == 0, err
    assert again.store is not None and again.store.noop
    (entry,) = [e for e in R.list_entries(registry_dir=configs) if e.name == "tiny-pytorch"]
    assert entry.version == "9.5.0"
    assert entry.artifacts.store and Path(entry.artifacts.store).is_dir(), out
    R.verify("tiny-pytorch", registry_dir=configs)
    kept = {i.version for i in ModelStore(store_root).list_versions("tiny")}
    assert kept == {"9.5.0", "9.6.0"} and "removed 9.4.0" in out
