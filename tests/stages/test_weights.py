"""The weights stage on real checkpoints: every accepted format, dtype casts, hostile pickles."""
from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from helpers import LABELS, make_inputs, make_project

if TYPE_CHECKING:  # torch is imported inside the tests that need it
    import torch

pytestmark = pytest.mark.slow


class _Canary:
    """Unpickling this runs os.system: the classic malicious checkpoint."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self) -> tuple[Callable[[str], int], tuple[str]]:
        return (os.system, (f"touch {self.path}",))


def test_malicious_pickle_is_refused_without_running(tmp_path: Path, tiny_inputs: Path) -> None:
    project = make_project(tmp_path / "p", tiny_inputs)
    ckpt = project.inputs / "checkpoint"
    canary = tmp_path / "canary"
    (ckpt / "model.safetensors").unlink()
    with open(ckpt / "pytorch_model.bin", "wb") as f:
        pickle.dump({"weight": _Canary(canary)}, f)
    run = project.doit("build:tiny")
    assert run.code != 0
    assert "refused to unpickle" in run.output and "weights_only" in run.output
    assert not canary.exists(), "the pickle ran code"
    assert not (project.root / "build" / "tiny" / "weights").exists()


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.mark.parametrize("fmt", ["bin", "sharded"])
def test_pickle_and_sharded_checkpoints_convert_to_the_same_tensors(tmp_path: Path, fmt: str) -> None:
    import torch

    ref_inputs, alt_inputs = tmp_path / "ref", tmp_path / "alt"
    make_inputs(ref_inputs, seed=7)
    make_inputs(alt_inputs, seed=7, weights=fmt)
    names = sorted(p.name for p in (alt_inputs / "checkpoint").iterdir())
    assert ("pytorch_model.bin" in names) if fmt == "bin" else ("model.safetensors.index.json" in names)
    ref = make_project(tmp_path / "p1", ref_inputs)
    alt = make_project(tmp_path / "p2", alt_inputs)
    for project in (ref, alt):
        assert project.doit("weights:tiny").code == 0
    a = _tensors(ref.root / "build/tiny/weights/model.safetensors")
    shards = sorted((alt.root / "build/tiny/weights").glob("*.safetensors"))
    b = _tensors(shards[0])  # a sharded checkpoint stays sharded: the union of its shards
    for shard in shards[1:]:
        b.update(_tensors(shard))
    assert (fmt == "sharded") == (alt.root / "build/tiny/weights/model.safetensors.index.json").is_file()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_dtype_cast_to_float16(tmp_path: Path, tiny_inputs: Path) -> None:
    import json

    import torch

    project = make_project(tmp_path / "p", tiny_inputs)
    project.edit("  task: multi-label-classification\n",
                 "  task: multi-label-classification\n  dtype: float16\n")
    run = project.doit("build:tiny")
    assert run.code == 0, run.output
    tensors = _tensors(project.root / "build/tiny/weights/model.safetensors")
    floats = [t for t in tensors.values() if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float16 for t in floats)
    config = json.loads((project.root / "build/tiny/weights/config.json").read_text())
    assert config["torch_dtype"] == "float16"
    assert len(json.loads((project.root / "build/tiny/labels/label_order.json").read_text())) == len(LABELS)


def test_two_clean_builds_give_byte_identical_bundles(tmp_path: Path, tiny_inputs: Path) -> None:
    one = make_project(tmp_path / "one", tiny_inputs)
    two = make_project(tmp_path / "two", tiny_inputs)
    for project in (one, two):
        run = project.doit("build:tiny")
        assert run.code == 0, run.output
    a = (one.dist() / "bundle.tar.gz").read_bytes()
    b = (two.dist() / "bundle.tar.gz").read_bytes()
    assert a == b
    assert (one.dist() / "manifest.json").read_bytes() == (two.dist() / "manifest.json").read_bytes()
