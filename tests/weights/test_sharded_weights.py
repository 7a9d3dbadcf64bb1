"""Sharded checkpoints stay sharded end to end, and a one-shard change moves one shard.

One project (module scope), real parts throughout: a seeded tiny classifier saved as four
safetensors shards, the real `doit` build, the model store, and Debian's docker-registry for the
model artifact. Tests run in file order: version 1.0.0 is built and published, then one shard
changes (as a retraining run would write it) and 1.0.1 is built and published beside it.
"""
from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path
from typing import Any, ClassVar

import pytest

from helpers import SPEC, Project, make_project
from modelkiln.artifacts.oci.layout import OciLayout
from modelkiln.publish.oci import OciPush, push
from modelkiln.publish.store import publish_to_store
from modelkiln.store import ModelStore
from ociregistry import DockerRegistry
from weights.shard_helpers import INDEX, bump_shard, shard_names, sharded_inputs

pytestmark = [pytest.mark.slow, pytest.mark.oci]

SHARDS = 4
AGENT = "tiny"
OCI_SPEC = SPEC + "publish:\n  oci: {host}/models/shards:{{version}}-{{backend}}\n"


def _stamp(p: Project, stage: str) -> dict[str, Any]:
    stamp: dict[str, Any] = json.loads((p.root / "build/tiny/.stamps" / f"{stage}.json").read_text())
    return stamp


def _weights(p: Project) -> Path:
    return p.root / "build" / "tiny" / "weights"


def _registry_blobs(reg: DockerRegistry) -> set[str]:
    """Every blob digest the registry's storage holds (what was ever uploaded to it)."""
    root = reg.root / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256"
    return {d.name for sub in root.iterdir() for d in sub.iterdir()} if root.is_dir() else set()


class State:
    """What the earlier steps saw, for the later ones (tests run in file order)."""

    inodes: ClassVar[dict[str, int]] = {}
    bumped: ClassVar[str] = ""
    first_push: ClassVar[OciPush | None] = None
    blobs_before: ClassVar[set[str]] = set()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, oci_registry: DockerRegistry) -> Project:
    inputs = tmp_path_factory.mktemp("sharded-inputs")
    sharded_inputs(inputs, shards=SHARDS, seed=5)
    p = make_project(tmp_path_factory.mktemp("sharded"), inputs,
                     spec=OCI_SPEC.replace("{host}", oci_registry.host))
    run = p.doit("build:tiny")
    assert run.code == 0, run.output
    return p


def test_a_sharded_checkpoint_builds_sharded(project: Project) -> None:
    ckpt = project.inputs / "checkpoint"
    names = shard_names(ckpt)
    assert len(names) == SHARDS
    out = _weights(project)
    assert sorted(p.name for p in out.glob("*.safetensors")) == names
    assert not (out / "model.safetensors").exists()
    for n in [*names, INDEX]:
        assert (out / n).read_bytes() == (ckpt / n).read_bytes(), n
    report = _stamp(project, "weights")["report"]
    assert report["shards"] == SHARDS and report["checked"] == "meta"
    # the packaged bundle and its manifest list every shard with its digest
    manifest = json.loads((project.dist() / "manifest.json").read_text())
    listed = {f["path"]: f["sha256"] for f in manifest["files"]}
    assert set(names) | {INDEX} <= set(listed)
    with tarfile.open(project.dist() / "bundle.tar.gz") as tar:
        members = set(tar.getnames())
        assert set(names) <= members and "model.safetensors" not in members
        card = tar.extractfile("model_card.md")
        assert card is not None
        assert f"| model file | {INDEX} ({SHARDS} safetensors shards) |" in card.read().decode()
    State.inodes = {n: os.stat(out / n).st_ino for n in names}


def test_the_sharded_bundle_loads_with_transformers(project: Project, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    with tarfile.open(project.dist() / "bundle.tar.gz") as tar:
        tar.extractall(tmp_path / "b", filter="data")
    model = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "b"))
    state = model.state_dict()
    for name in shard_names(project.inputs / "checkpoint"):
        for key, t in load_file(str(project.inputs / "checkpoint" / name)).items():
            assert torch.equal(state[key], t), key


def test_first_version_is_stored_and_pushed(project: Project, oci_registry: DockerRegistry,
                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    root = project.root / "store"
    stored = publish_to_store(project.dist(), root, AGENT, "1.0.0")
    assert not stored.noop
    layout = project.root / "dist/tiny/1.0.0/oci/pytorch"
    State.first_push = push(layout, "model", f"{oci_registry.host}/models/shards:1.0.0-pytorch")
    assert State.first_push.blobs_uploaded > SHARDS
    State.blobs_before = _registry_blobs(oci_registry)


def test_one_changed_shard_is_the_only_shard_rewritten(project: Project) -> None:
    names = shard_names(project.inputs / "checkpoint")
    State.bumped = names[2]
    bump_shard(project.inputs / "checkpoint" / State.bumped)
    project.edit('version: "1.0.0"', 'version: "1.0.1"')
    run = project.doit("build:tiny")
    assert run.code == 0, run.output
    assert "weights:tiny" in run.executed
    out = _weights(project)
    for n in names:
        same = os.stat(out / n).st_ino == State.inodes[n]
        assert same == (n != State.bumped), (n, "inode kept" if same else "rewritten")
        assert (out / n).read_bytes() == (project.inputs / "checkpoint" / n).read_bytes()
    assert _stamp(project, "weights")["report"]["placed"] == {"copied": 1, "linked": SHARDS - 1}


def test_the_store_links_unchanged_shards_from_the_previous_version(project: Project) -> None:
    root = project.root / "store"
    stored = publish_to_store(project.dist("pytorch", "1.0.1"), root, AGENT, "1.0.1")
    assert not stored.noop and stored.current
    old = root / AGENT / "versions" / "1.0.0" / "bundle"
    for n in shard_names(project.inputs / "checkpoint"):
        a, b = os.stat(old / n), os.stat(stored.bundle_path / n)
        if n == State.bumped:
            assert a.st_ino != b.st_ino and b.st_nlink == 1, n
        else:
            assert a.st_ino == b.st_ino and b.st_nlink == 2, n
        assert (stored.bundle_path / n).read_bytes() == \
            (project.inputs / "checkpoint" / n).read_bytes()
    store = ModelStore(root)
    store.verify(AGENT, "1.0.0")
    store.verify(AGENT, "1.0.1")


def test_the_registry_receives_only_the_changed_shard(project: Project,
                                                       oci_registry: DockerRegistry) -> None:
    layout = project.root / "dist/tiny/1.0.1/oci/pytorch"
    second = push(layout, "model", f"{oci_registry.host}/models/shards:1.0.1-pytorch")
    lay = OciLayout(layout)
    layers = json.loads(lay.read_blob(lay.find("model")))["layers"]
    by_path = {d["annotations"]["org.cncf.model.filepath"]: d for d in layers}
    names = shard_names(project.inputs / "checkpoint")
    new = _registry_blobs(oci_registry) - State.blobs_before
    for n in names:  # one layer per shard; only the changed one is a new blob
        digest = by_path[n]["digest"].split(":", 1)[1]
        assert (digest in new) == (n == State.bumped), n
    shard_bytes = sum(by_path[n]["size"] for n in names)
    assert second.bytes_uploaded < shard_bytes - min(by_path[n]["size"] for n in names)
    assert second.blobs_skipped >= SHARDS - 1
    assert State.first_push is not None and second.bytes_uploaded < State.first_push.bytes_uploaded


@pytest.fixture(scope="module")
def spare_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    inputs = tmp_path_factory.mktemp("sharded-spare")
    sharded_inputs(inputs, shards=SHARDS, seed=6)
    return inputs


def test_a_shard_missing_a_tensor_is_refused_with_its_key(spare_inputs: Path,
                                                           tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    p = make_project(tmp_path / "p", spare_inputs)
    ckpt = p.inputs / "checkpoint"
    last = ckpt / shard_names(ckpt)[-1]
    state = load_file(str(last))
    dropped = sorted(state)[-1]
    del state[dropped]
    save_file(state, str(last), metadata={"format": "pt"})
    index = json.loads((ckpt / INDEX).read_text())
    del index["weight_map"][dropped]
    (ckpt / INDEX).write_text(json.dumps(index))
    run = p.doit("weights:tiny")
    assert run.code != 0
    assert "do not match the architecture" in run.output and dropped in run.output


def test_an_index_that_names_the_wrong_shard_is_refused(spare_inputs: Path,
                                                        tmp_path: Path) -> None:
    p = make_project(tmp_path / "p", spare_inputs)
    ckpt = p.inputs / "checkpoint"
    index = json.loads((ckpt / INDEX).read_text())
    first, last = shard_names(ckpt)[0], shard_names(ckpt)[-1]
    moved = next(k for k, v in sorted(index["weight_map"].items()) if v == first)
    index["weight_map"][moved] = last
    (ckpt / INDEX).write_text(json.dumps(index))
    run = p.doit("weights:tiny")
    assert run.code != 0
    assert f"weight_map says '{moved}' is in {last}, the headers say {first}" in run.output


def test_a_dtype_cast_is_streamed_per_tensor_and_loads(spare_inputs: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    p = make_project(tmp_path / "p", spare_inputs)
    p.edit("  task: multi-label-classification\n",
           "  task: multi-label-classification\n  dtype: bfloat16\n")
    run = p.doit("weights:tiny")
    assert run.code == 0, run.output
    ckpt, out = p.inputs / "checkpoint", _weights(p)
    for name in shard_names(ckpt):
        source, cast = load_file(str(ckpt / name)), load_file(str(out / name))
        assert source.keys() == cast.keys()
        for k, t in source.items():
            assert torch.equal(cast[k], t.to(torch.bfloat16) if t.is_floating_point() else t), k
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    index = json.loads((out / INDEX).read_text())
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for n in shard_names(ckpt)
        for t in load_file(str(out / n)).values())
    model = AutoModelForSequenceClassification.from_pretrained(str(out))
    assert model.state_dict().keys() >= load_file(str(out / shard_names(ckpt)[0])).keys()
    # one source shard changes: only its cast is written again, the others keep their inodes
    names = shard_names(ckpt)
    inodes = {n: os.stat(out / n).st_ino for n in names}
    bump_shard(ckpt / names[1])
    again = p.doit("weights:tiny")
    assert again.code == 0, again.output
    assert _stamp(p, "weights")["report"]["placed"] == {"cast": 1, "linked": SHARDS - 1}
    for n in names:
        assert (os.stat(out / n).st_ino == inodes[n]) == (n != names[1]), n
    changed = load_file(str(out / names[1]))
    assert all(torch.equal(changed[k], t.to(torch.bfloat16) if t.is_floating_point() else t)
               for k, t in load_file(str(ckpt / names[1])).items())


ONNX_SPEC = SPEC + """\
  onnx:
    quantize: {{mode: dynamic, weight_type: int8, per_channel: true}}
    parity: {{atol: 1.0e-4, max_decision_flip_rate: 0.1}}
"""


def test_the_onnx_backend_exports_and_gates_a_sharded_checkpoint(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """Downstream of the weights stage, a sharded set is read as transformers reads it: the ONNX
    export, int8 and its parity gate, the smoke test and both packages build from it."""
    inputs = tmp_path_factory.mktemp("sharded-onnx")
    sharded_inputs(inputs, shards=SHARDS, seed=1, steps=150, rows=300, calibration=120)
    p = make_project(tmp_path_factory.mktemp("sharded-onnx-proj"), inputs, spec=ONNX_SPEC)
    run = p.doit("build:tiny")
    assert run.code == 0, run.output
    assert {"onnx:tiny", "int8:tiny", "parity:tiny", "package:tiny-onnx"} <= run.executed
    assert _stamp(p, "weights")["report"]["shards"] == SHARDS
    onnx = json.loads((p.dist("onnx") / "manifest.json").read_text())
    assert onnx["parity"]["int8"]["decision_flip_rate"] <= 0.1
    pytorch = {f["path"] for f in json.loads((p.dist() / "manifest.json").read_text())["files"]}
    assert set(shard_names(inputs / "checkpoint")) | {INDEX} <= pytorch


def test_a_clean_build_packs_the_same_bytes_as_the_incremental_one(project: Project,
                                                                    tmp_path: Path) -> None:
    """1.0.1 was built by linking three shards from 1.0.0's output; a clean project from the
    same inputs copies all four. The tarballs and manifests are byte-identical."""
    clean = make_project(tmp_path / "clean", project.inputs,
                         spec=project.spec.read_text().replace("{", "{{").replace("}", "}}"))
    run = clean.doit("package:tiny-pytorch")
    assert run.code == 0, run.output
    assert _stamp(clean, "weights")["report"]["placed"] == {"copied": SHARDS}
    for name in ("bundle.tar.gz", "manifest.json"):
        assert (clean.dist("pytorch", "1.0.1") / name).read_bytes() == \
            (project.dist("pytorch", "1.0.1") / name).read_bytes(), name
