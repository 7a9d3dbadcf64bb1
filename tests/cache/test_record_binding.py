"""A record is restored only for the task it was written for (issue 19, item 6).

One trusted writer builds two bundles, `tiny` and `other` (the same model, other label fields),
into a file:// cache. Each test copies that cache, tampers with its records the way a writer with
cache credentials could (through `ActionRecord` itself, so every tampered record is well formed
and self-consistent), and builds in a fresh checkout that only reads it:

- tiny's labels record filed under other's labels key (re-keyed, then also re-labelled with
  other's task): other's bundle must carry other's label fields, not tiny's;
- other's labels record with one more output (the biggest blob in the cache): the bundle must not
  ship it;
- the weights and tokenizer records swapped: the build must still succeed, without a traceback,
  and give the writer's tarball.

Each is a miss with a warning, and the stage runs instead.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from helpers import BIN, Project, make_project
from modelkiln.cache import ActionRecord, BlobRef

pytestmark = pytest.mark.slow


@dataclasses.dataclass
class Built:
    root: Path
    cache: Path
    tarballs: dict[str, bytes]
    fields: dict[str, bytes]


def _build(project: Project, cache: Path, *tasks: str, write: bool) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "KILN_CACHE_URI": cache.as_uri(),
           "KILN_CACHE_WRITE": "1" if write else "0"}
    return subprocess.run([str(BIN / "doit"), *tasks], cwd=project.root, capture_output=True,
                          text=True, timeout=600, env=env)


def _two_bundles(root: Path, inputs: Path) -> Project:
    tiny = make_project(root, inputs, "tiny")
    other = make_project(root, inputs, "other")
    fields_path = other.inputs / "registry_label_fields.json"
    fields = json.loads(fields_path.read_text())
    fields_path.write_text(json.dumps({k: {**v, "value": f"other-{k}"} for k, v in fields.items()}))
    return tiny


@pytest.fixture(scope="module")
def writer(tmp_path_factory: pytest.TempPathFactory, tiny_inputs: Path) -> Built:
    base = tmp_path_factory.mktemp("binding")
    project = _two_bundles(base / "W", tiny_inputs)
    done = _build(project, base / "cache", "build:tiny", "build:other", write=True)
    assert done.returncode == 0, done.stdout + done.stderr
    dist = {n: project.root / "dist" / n / "1.0.0" / "pytorch" / "bundle.tar.gz"
            for n in ("tiny", "other")}
    fields = {n: (project.root / "build" / n / "labels" / "registry_label_fields.json").read_bytes()
              for n in ("tiny", "other")}
    assert fields["tiny"] != fields["other"]
    return Built(project.root, base / "cache", {n: p.read_bytes() for n, p in dist.items()}, fields)


def _records(cache: Path) -> dict[str, tuple[Path, ActionRecord]]:
    """task -> (file, record) of every record in the cache."""
    out = {}
    for path in (cache / "ac").glob("*.json"):
        record = ActionRecord.from_bytes(path.read_bytes(), path.stem)
        out[record.task] = (path, record)
    return out


def _file(path: Path, record: ActionRecord) -> None:
    """Put `record` at `path` in place of what is there (a writer can overwrite its cache)."""
    path.unlink()
    path.write_bytes(record.to_bytes())


def _reader(writer: Built, tmp_path: Path, tiny_inputs: Path) -> tuple[Project, Path]:
    cache = tmp_path / "cache"
    shutil.copytree(writer.cache, cache)
    return _two_bundles(tmp_path / "R", tiny_inputs), cache


def _members(tarball: Path) -> dict[str, bytes]:
    with tarfile.open(tarball) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()  # type: ignore[union-attr]
                if m.isfile()}


@pytest.mark.parametrize("relabel", [False, True], ids=["rekeyed", "rekeyed-and-relabelled"])
def test_a_record_copied_under_another_key_is_a_miss(writer: Built, tmp_path: Path,
                                                     tiny_inputs: Path, relabel: bool) -> None:
    project, cache = _reader(writer, tmp_path, tiny_inputs)
    records = _records(cache)
    _tiny_path, tiny_labels = records["labels:tiny"]
    other_path, other_labels = records["labels:other"]
    planted = dataclasses.replace(tiny_labels, key=other_labels.key)
    if relabel:
        planted = dataclasses.replace(planted, task="labels:other")
    _file(other_path, planted)
    done = _build(project, cache, "build:other", write=False)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    bundle = project.root / "dist" / "other" / "1.0.0" / "pytorch" / "bundle.tar.gz"
    shipped = _members(bundle)["registry_label_fields.json"]
    assert shipped == writer.fields["other"], "tiny's labels went into other's bundle"
    assert "labels:other: restored from cache" not in out
    assert "unusable" in out, out
    assert bundle.read_bytes() == writer.tarballs["other"]


def test_a_record_with_an_undeclared_output_is_a_miss(writer: Built, tmp_path: Path,
                                                      tiny_inputs: Path) -> None:
    project, cache = _reader(writer, tmp_path, tiny_inputs)
    records = _records(cache)
    path, labels = records["labels:other"]
    biggest = max((b for _p, r in records.values() for b in r.outputs), key=lambda b: b.size)
    extra = BlobRef("extra.bin", biggest.size, biggest.sha256)
    _file(path, dataclasses.replace(labels, outputs=(*labels.outputs, extra)))
    done = _build(project, cache, "build:other", write=False)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    bundle = project.root / "dist" / "other" / "1.0.0" / "pytorch" / "bundle.tar.gz"
    assert "extra.bin" not in _members(bundle), "an output the labels stage never writes shipped"
    assert not (project.root / "build" / "other" / "labels" / "extra.bin").exists()
    assert "unusable" in out and "extra.bin" in out, out
    assert bundle.read_bytes() == writer.tarballs["other"]


def test_records_swapped_between_two_tasks_are_misses(writer: Built, tmp_path: Path,
                                                      tiny_inputs: Path) -> None:
    project, cache = _reader(writer, tmp_path, tiny_inputs)
    records = _records(cache)
    (w_path, weights), (t_path, tok) = records["weights:tiny"], records["tokenizer:tiny"]
    _file(w_path, dataclasses.replace(tok, key=weights.key))
    _file(t_path, dataclasses.replace(weights, key=tok.key))
    done = _build(project, cache, "build:tiny", write=False)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "Traceback" not in out, out
    assert "weights:tiny: restored from cache" not in out
    assert "tokenizer:tiny: restored from cache" not in out
    assert "labels:tiny: restored from cache" in out  # the rest of the cache is still used
    bundle = project.root / "dist" / "tiny" / "1.0.0" / "pytorch" / "bundle.tar.gz"
    assert bundle.read_bytes() == writer.tarballs["tiny"]
