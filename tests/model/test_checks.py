"""Cross-field checks (model/convert.py) through `kiln validate`: golden texts and exit code 3.

The schema cannot know that files exist, that label files agree with the model's head, or that two
specs claim one name; these tests pin the exact messages a user sees for each.
"""
from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

from helpers import BIN
from modelkiln.model.convert import BASE_HINT


def safetensors_bytes(header: dict[str, object] | None = None, data: bytes = bytes(8)) -> bytes:
    """A safetensors file by hand: validate reads only the header, so no torch is needed. The
    default holds one F32 tensor of shape [2] that fills the 8 data bytes."""
    head = json.dumps(header if header is not None else
                      {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    return len(head).to_bytes(8, "little") + head + data

SPEC = """\
apiVersion: modelkiln/v1
kind: Bundle
name: {name}
version: "1.0.0"
source:
  checkpoint: {ckpt}
  task: multi-label-classification
labels:
  order: m/label_order.json
  fields: m/fields.json
thresholds:
  strategy: fixed
  default: 0.5
  values: {{{values}}}
backends:
  pytorch: {{}}
{extra}"""


def project(tmp_path: Path, head: Sequence[str] = ("a", "b"), order: Sequence[str] = ("a", "b"),
            fields: Sequence[str] = ("a", "b"), ckpt: str = "m/ckpt", values: str = "",
            extra: str = "", name: str = "x") -> Path:
    (tmp_path / "pyproject.toml").write_text("")
    m = tmp_path / "bundles" / "m"
    (m / "ckpt").mkdir(parents=True, exist_ok=True)
    config = {"id2label": {str(i): lab for i, lab in enumerate(head)}}
    (m / "ckpt" / "config.json").write_text(json.dumps(config))
    (m / "ckpt" / "model.safetensors").write_bytes(safetensors_bytes())
    (m / "label_order.json").write_text(json.dumps(list(order)))
    (m / "fields.json").write_text(json.dumps({f: {} for f in fields}))
    spec = tmp_path / "bundles" / f"{name}.yaml"
    spec.write_text(SPEC.format(name=name, ckpt=ckpt, values=values, extra=extra))
    return spec


def validate(cwd: Path, *specs: str) -> tuple[int, list[str]]:
    done = subprocess.run([str(BIN / "kiln"), "validate", *specs], cwd=cwd, capture_output=True,
                          text=True, timeout=60)
    assert "Traceback" not in done.stderr
    return done.returncode, done.stderr.strip().splitlines()[1:]


def test_valid_spec_passes(tmp_path: Path) -> None:
    project(tmp_path)
    done = subprocess.run([str(BIN / "kiln"), "validate"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "ok  x.yaml: x 1.0.0 (pytorch)" in done.stdout


def test_labels_that_do_not_match_the_head(tmp_path: Path) -> None:
    project(tmp_path, head=("a", "b", "c"))
    assert validate(tmp_path) == (3, [
        "bundles/x.yaml:9:10: labels.order: 2 labels, but the model's head has 3 outputs "
        "(labels.order must list every output of the model)"])


def test_label_order_differs_from_head_and_fields(tmp_path: Path) -> None:
    project(tmp_path, order=("b", "a"), fields=("a", "z"))
    assert validate(tmp_path) == (3, [
        "bundles/x.yaml:9:10: labels.order: labels do not match the model's id2label ['a', 'b'] "
        "(list labels in the model's output order (config.json id2label))",
        "bundles/x.yaml:10:11: labels.fields: labels differ from labels.order (extra: ['z'], "
        "missing: ['b']) (one entry per label in label_order)"])


def test_missing_path_and_escape_and_unknown_threshold_label(tmp_path: Path) -> None:
    project(tmp_path, ckpt="../../outside", values="zeta: 0.2")
    code, lines = validate(tmp_path)
    assert code == 3
    assert lines[0].startswith("bundles/x.yaml:6:15: source.checkpoint: path '../../outside' "
                               "escapes the project root")
    assert lines[1] == "bundles/x.yaml:14:12: thresholds.values.zeta: unknown label 'zeta' (labels are: a, b)"


def test_checkpoint_that_does_not_exist(tmp_path: Path) -> None:
    project(tmp_path, ckpt="m/nope")
    assert validate(tmp_path) == (3, [
        "bundles/x.yaml:6:15: source.checkpoint: 'm/nope' does not exist (create it, or fix the "
        "path (relative to bundles/); example inputs come from `python -m modelkiln.demo`)"])


def test_duplicate_bundle_names_across_specs(tmp_path: Path) -> None:
    project(tmp_path, name="x")
    other = project(tmp_path, name="y")
    other.write_text(other.read_text().replace("name: y", "name: x"))
    code, lines = validate(tmp_path)
    assert code == 3
    assert lines == [f"bundles/y.yaml:3:7: name: bundle name 'x' is also used by "
                     f"{tmp_path / 'bundles' / 'x.yaml'} (give each spec its own name)"]


def test_store_agent_must_separate_backends(tmp_path: Path) -> None:
    extra = ("  onnx: {}\npublish:\n  store: {root: /srv/models, agent: reg}\n")
    spec = project(tmp_path, extra="")
    text = spec.read_text().replace("  pytorch: {}\n", "  pytorch: {}\n" + extra)
    text = text.replace("strategy: fixed", "strategy: fixed\n  calibration: m/label_order.json")
    spec.write_text(text)
    code, lines = validate(tmp_path)
    assert code == 3
    assert lines == ["bundles/x.yaml:20:37: publish.store.agent: 2 backends would share the store "
                     "agent 'reg' (use agent: \"reg-{backend}\")"]


def test_s3_prefix_must_separate_backends(tmp_path: Path) -> None:
    spec = project(tmp_path)
    text = spec.read_text().replace("  pytorch: {}\n", "  pytorch: {}\n  onnx: {}\npublish:\n"
                                    "  s3: s3://bucket/models/{version}/\n")
    spec.write_text(text.replace("strategy: fixed", "strategy: fixed\n  calibration: m/label_order.json"))
    code, lines = validate(tmp_path)
    assert code == 3
    assert lines == ["bundles/x.yaml:20:7: publish.s3: 2 backends would publish to the same prefix "
                     "(put {backend} in the destination, e.g. s3://bucket/models/{version}/{backend}/)"]


IMAGE = "image:\n  repository: registry.example.com/models/x\n  backend: pytorch\n"


def test_an_image_without_a_base_names_the_fix(tmp_path: Path) -> None:
    """Without a base the image has no python3 and cannot start: refused at validation."""
    project(tmp_path, extra=IMAGE)
    code, lines = validate(tmp_path)
    assert code == 3
    assert len(lines) == 1 and lines[0].startswith(
        "bundles/x.yaml:18:3: image: no base: without one the image has no python3 and cannot "
        "start (name a base with python3, pinned: ")
    assert "kiln base PATH" in lines[0] and "skopeo inspect" in lines[0]


def test_an_oci_base_that_is_not_made_yet_says_how_to_make_it(tmp_path: Path) -> None:
    project(tmp_path, extra=IMAGE + "  base: oci:../bases/deb\n")
    code, lines = validate(tmp_path)
    assert code == 3
    assert lines == ["bundles/x.yaml:20:9: image.base: base layout '../bases/deb' does not exist "
                     f"(make it with `kiln base ../bases/deb` from bundles/ (mmdebstrap: Debian's "
                     f"python3), or {BASE_HINT})"]
    (tmp_path / "bases" / "deb").mkdir(parents=True)
    code, lines = validate(tmp_path)
    assert code == 3 and lines[0].endswith("image.base: '../bases/deb' is not an OCI image layout "
                                           f"(no index.json) (make it with `kiln base ../bases/deb`"
                                           f", or {BASE_HINT})")
    (tmp_path / "bases" / "deb" / "index.json").write_text("{}")
    assert validate(tmp_path) == (0, [])


def test_a_registry_base_must_be_pinned(tmp_path: Path) -> None:
    project(tmp_path, extra=IMAGE + "  base: registry.example.com/debian:bookworm\n")
    code, lines = validate(tmp_path)
    assert code == 3 and "image.base: base image 'registry.example.com/debian:bookworm' is not " \
        "pinned by digest" in lines[0]
    project(tmp_path, extra=IMAGE + "  base: registry.example.com/debian@sha256:" + "a" * 64 + "\n")
    assert validate(tmp_path) == (0, [])
