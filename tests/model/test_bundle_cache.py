"""The cache of converted bundles (model.cache): a later load reuses a conversion only while the
spec and every file its checks saw are as they were, and gives exactly what converting gives.

Each test counts real conversions (`to_bundle` calls) across loads through `api.load_bundles`,
the function `kiln validate`, `kiln plan` and dodo.py use. Files are written, then left alone for
a moment before the first load: the cache refuses to keep anything that saw a file modified in
the last 100 ms (a second write in the same timestamp tick could keep its stat).
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from model.test_checks import SPEC, project, safetensors_bytes
from modelkiln import api
from modelkiln.errors import SpecError
from modelkiln.model import Bundle, to_bundle
from modelkiln.model import cache as bundle_cache
from modelkiln.model.codec import decode_bundle, encode

M = Path("bundles/m")


@pytest.fixture
def conversions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the specs converted for real (cache misses) from here on."""
    seen: list[str] = []
    real = to_bundle  # the converter model.cache calls (imported there from model.convert)

    def counting(doc: Any) -> Any:
        seen.append(doc.path.name)
        return real(doc)

    monkeypatch.setattr(bundle_cache, "to_bundle", counting)
    return seen


def settle() -> None:
    time.sleep(0.15)  # past the 100 ms in which a file's stat may not show a second write


def load(root: Path) -> list[Bundle]:
    return api.load_bundles(api.discover([root / "bundles"]))


def test_a_second_load_reuses_the_conversion(tmp_path: Path, conversions: list[str]) -> None:
    project(tmp_path)
    settle()
    first = load(tmp_path)
    again = load(tmp_path)
    assert conversions == ["x.yaml"]
    assert again == first
    assert len(list((tmp_path / ".kiln" / "bundles").glob("*.json"))) == 1


@pytest.mark.parametrize("edit, wanted", [
    (lambda m: (m / "label_order.json").write_text('["b", "a"]'), "labels do not match"),
    (lambda m: (m / "fields.json").write_text('{"a": {}, "z": {}}'), "labels differ from labels.order"),
    (lambda m: (m / "ckpt" / "config.json").write_text('{"id2label": {"0": "a"}}'), "head has 1 outputs"),
    (lambda m: (m / "ckpt" / "model.safetensors").write_bytes(safetensors_bytes(data=bytes(4))),
     "past its end"),
    (lambda m: (m / "ckpt" / "model.safetensors").unlink(), "checkpoint has no weights"),
    (lambda m: (m / "label_order.json").unlink(), "does not exist"),
])
def test_an_edited_input_is_checked_again(tmp_path: Path, conversions: list[str],
                                          edit: Callable[[Path], object], wanted: str) -> None:
    project(tmp_path)
    settle()
    load(tmp_path)
    edit(tmp_path / M)
    with pytest.raises(SpecError) as info:
        load(tmp_path)
    assert wanted in str(info.value)
    assert conversions == ["x.yaml", "x.yaml"]


def test_same_size_and_mtime_rewrite_is_still_seen(tmp_path: Path, conversions: list[str]) -> None:
    """A header rewritten in place with its size and mtime put back: only ctime tells."""
    project(tmp_path)
    weights = tmp_path / M / "ckpt" / "model.safetensors"
    settle()
    load(tmp_path)
    before = weights.stat()
    original = weights.read_bytes()
    lying = original.replace(b'"shape": [2]', b'"shape": [3]')  # one byte: 12 bytes claimed, 8 held
    assert len(lying) == len(original) and lying != original
    weights.write_bytes(lying)
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (weights.stat().st_size, weights.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    with pytest.raises(SpecError, match="needs 12"):
        load(tmp_path)
    assert conversions == ["x.yaml", "x.yaml"]


def test_touched_but_identical_input_gives_the_same_bundle(tmp_path: Path, conversions: list[str]
                                                           ) -> None:
    project(tmp_path)
    settle()
    first = load(tmp_path)
    os.utime(tmp_path / M / "label_order.json")  # same bytes, new mtime
    settle()
    assert load(tmp_path) == first
    assert load(tmp_path) == first
    assert conversions == ["x.yaml", "x.yaml"]  # checked once again, then reused


def test_an_edited_spec_is_converted_again(tmp_path: Path, conversions: list[str]) -> None:
    spec = project(tmp_path)
    settle()
    assert load(tmp_path)[0].thresholds.default == 0.5
    spec.write_text(spec.read_text().replace("default: 0.5", "default: 0.7"))
    assert load(tmp_path)[0].thresholds.default == 0.7
    assert conversions == ["x.yaml", "x.yaml"]


def test_a_retargeted_symlink_is_seen(tmp_path: Path, conversions: list[str]) -> None:
    """bundles/m/ckpt is a link; pointing it at another checkpoint (another head) is a change
    even though every path the spec names reads the same."""
    project(tmp_path)
    m = tmp_path / M
    (m / "ckpt").rename(m / "ckpt-a")
    other = m / "ckpt-b"
    other.mkdir()
    (other / "config.json").write_text('{"id2label": {"0": "b", "1": "a"}}')
    (other / "model.safetensors").write_bytes(safetensors_bytes())
    (m / "ckpt").symlink_to("ckpt-a")
    settle()
    assert load(tmp_path)[0].source.checkpoint == m.resolve() / "ckpt-a"
    (m / "ckpt").unlink()
    (m / "ckpt").symlink_to("ckpt-b")
    with pytest.raises(SpecError, match="labels do not match"):
        load(tmp_path)
    assert conversions == ["x.yaml", "x.yaml"]


def test_files_written_just_now_are_not_kept(tmp_path: Path, conversions: list[str]) -> None:
    project(tmp_path)
    load(tmp_path)  # inputs younger than 100 ms: converted, not kept
    settle()
    load(tmp_path)  # now kept
    load(tmp_path)
    assert conversions == ["x.yaml", "x.yaml"]


def test_a_damaged_entry_is_a_miss(tmp_path: Path, conversions: list[str]) -> None:
    project(tmp_path)
    settle()
    first = load(tmp_path)
    (entry,) = (tmp_path / ".kiln" / "bundles").glob("*.json")
    data = json.loads(entry.read_text())
    data["bundle"]["labels"] = {"order": 3}
    entry.write_text(json.dumps(data))
    assert load(tmp_path) == first
    entry.write_text("{not json")
    assert load(tmp_path) == first
    assert conversions == ["x.yaml", "x.yaml", "x.yaml"]


def test_two_specs_of_one_name_are_refused_from_the_cache_too(tmp_path: Path,
                                                               conversions: list[str]) -> None:
    project(tmp_path, name="x")
    project(tmp_path, name="y")
    settle()
    load(tmp_path)
    y = tmp_path / "bundles" / "y.yaml"
    y.write_text(y.read_text().replace("name: y", "name: x"))
    settle()
    for _ in range(2):  # the second time both come from the cache
        with pytest.raises(SpecError, match="bundle name 'x' is also used by"):
            load(tmp_path)
    bundles, broken = api.load_bundles_partial(api.discover([tmp_path / "bundles"]))
    assert [b.name for b in bundles] == ["x"]
    assert [b.spec_path.name for b in broken] == ["y.yaml"]


def test_every_field_survives_the_json_form(tmp_path: Path) -> None:
    """A bundle using every section: its cached form decodes to an equal Bundle."""
    project(tmp_path)
    m = tmp_path / M
    (m / "cal.jsonl").write_text('{"text": "t", "labels": ["a"]}\n')
    extra = """\
  onnx:
    quantize: {mode: static, op_types: [MatMul]}
    parity: {atol: 0.001, samples: 4}
  tensorrt:
    precision: int8
    profiles: {batch: {min: 1, opt: 2, max: 4}}
image:
  repository: registry.example.com/models/x
  base: registry.example.com/base/python@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
  backend: onnx
  packages: [orjson==3.10.0]
  test: off
publish:
  s3: "s3://bucket/x/{version}/{backend}/"
  store: {root: "${MODEL_STORE_ROOT}", agent: "x-{backend}"}
registry:
  roles: [primary]
metadata: {owner: ml, replicas: 2, ratio: 0.5, live: true}
"""
    spec = tmp_path / "bundles" / "x.yaml"
    text = SPEC.format(name="x", ckpt="m/ckpt", values="a: 0.25", extra="")
    text = text.replace("  default: 0.5\n", "  default: 0.5\n  calibration: m/cal.jsonl\n")
    spec.write_text(text + extra)
    (bundle,) = load(tmp_path)
    assert bundle.onnx and bundle.tensorrt and bundle.image and bundle.publish.store
    assert dict(bundle.metadata) == {"owner": "ml", "replicas": 2, "ratio": 0.5, "live": True}
    again = decode_bundle(json.loads(json.dumps(encode(bundle))))
    assert again == bundle
    assert [type(v) for _, v in again.metadata] == [type(v) for _, v in bundle.metadata]
