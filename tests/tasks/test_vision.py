"""image-classification bundles: the image processor in the bundle, the gate on calibration
images (and its failure on an export with the wrong label order), predict on an image file,
and an image edited in place rerunning only the gate."""
from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from helpers import Project

pytestmark = pytest.mark.slow


def test_bundle_holds_processor_and_gate_figures(vision_built: Project) -> None:
    dist = vision_built.dist("onnx")
    with tarfile.open(dist / "bundle.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"preprocessor_config.json", "registry_model_int8.onnx", "label_order.json",
            "thresholds.json"} <= names
    assert not any(n.startswith("tokenizer/") for n in names)
    manifest = json.loads((dist / "manifest.json").read_text())
    assert manifest["signature"]["input"] == "image"
    assert manifest["signature"]["labels"] == ["red", "green", "blue"]
    gate = manifest["parity"]["vision_parity"]
    assert gate["rows"] == 40 and gate["gates"] == {"fp32": "pass", "int8": "pass"}
    assert gate["int8"]["top_label_agreement"] >= 0.95


def test_gate_fails_on_an_export_with_the_wrong_label_order(vision_built: Project,
                                                            tmp_path: Path) -> None:
    """Rows of the classifier head swapped (red answers as green): the export still runs, the
    gate's fp32 and int8 figures both fail against PyTorch at the shipped thresholds."""
    import torch
    from transformers import AutoModelForImageClassification

    from modelkiln.stages import parity, vision_parity
    from modelkiln.stages.kinds.vision import _export

    build = vision_built.root / "build" / "vision"
    model = AutoModelForImageClassification.from_pretrained(str(build / "weights"))
    with torch.no_grad():
        model.classifier.weight[:] = model.classifier.weight[[1, 0, 2]]
        model.classifier.bias[:] = model.classifier.bias[[1, 0, 2]]
    model.save_pretrained(str(tmp_path / "swapped"))
    _export(None, tmp_path / "swapped", tmp_path / "onnx", None)  # type: ignore[arg-type]
    labels = ("red", "green", "blue")
    images, _ = vision_parity.read_images(vision_built.inputs / "calibration.jsonl", labels, None)
    values = vision_parity.pixels(build / "image_processor", images)
    ref = vision_parity.torch_logits(build / "weights", values)
    broken = vision_parity.onnx_logits(tmp_path / "onnx" / "model.onnx", values, False)
    cuts = json.loads((build / "thresholds" / "thresholds.json").read_text())
    report = parity.compare(ref, broken, broken, labels, cuts, "single-label-classification")
    failed = parity.gate(report, 1e-4, 0.05)
    assert set(failed) == {"fp32", "int8"}
    assert report["int8"]["top_label_agreement"] < 0.9
    good = vision_parity.onnx_logits(build / "onnx" / "model.onnx", values, False)
    assert parity.gate(parity.compare(ref, good, good, labels, cuts,
                                      "single-label-classification"), 1e-4, 0.05) == {}


def test_predict_labels_an_image_file(vision_built: Project, tmp_path: Path) -> None:
    with tarfile.open(vision_built.dist("onnx") / "bundle.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    rows = [json.loads(line) for line in
            (vision_built.inputs / "calibration.jsonl").read_text().splitlines()[:10]]
    lines = "".join(json.dumps({"image": str(vision_built.inputs / r["image"])}) + "\n"
                    for r in rows) + '{"image": "/no/such.png"}\n'
    done = subprocess.run([sys.executable, "-m", "modelkiln.runtime", "predict", str(tmp_path)],
                          input=lines, capture_output=True, text=True, timeout=120)
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 1 and "cannot read image" in answers[-1]["error"]
    right = sum(a["labels"] == r["labels"] for a, r in zip(answers, rows, strict=False))
    assert right >= 9  # the colours are easy; the threshold (0.4) rarely abstains


def test_image_classifier_takes_fixed_thresholds_only(vision_built: Project) -> None:
    text = vision_built.spec.read_text()
    vision_built.spec.write_text(text.replace("strategy: fixed", "strategy: f1-optimal"))
    try:
        done = vision_built.kiln("validate")
    finally:
        vision_built.spec.write_text(text)
    assert done.returncode != 0 and "fixed thresholds only" in done.stderr


def test_an_edited_calibration_image_reruns_only_the_vision_gate(vision_built: Project) -> None:
    """The gate's plan lists the image files the calibration rows name: with nothing changed
    the build is a no-op; an image edited in place (same name, same calibration file) reruns
    vision_parity (and the package that carries its figures), no export, quantization or
    processor stage; an image no row names changes nothing."""
    from PIL import Image

    first = json.loads((vision_built.inputs / "calibration.jsonl").read_text().splitlines()[0])
    image = vision_built.inputs / first["image"]
    before = image.read_bytes()
    noop = vision_built.doit("build:vision")
    assert noop.code == 0 and noop.executed == set(), noop.output
    unused = image.parent / "not-in-any-row.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(unused)
    try:
        assert vision_built.doit("build:vision").executed == set()
        with Image.open(image) as img:
            edited = img.convert("RGB")
        pixel = edited.getpixel((0, 0))
        assert isinstance(pixel, tuple)
        edited.putpixel((0, 0), tuple(255 - int(c) for c in pixel))
        edited.save(image)
        planned = vision_built.kiln("plan", "--json")
        rows = {r["task"]: r for r in json.loads(planned.stdout)}
        assert rows["vision_parity:vision"]["action"] == "run"
        assert any(first["image"].split("/")[-1] in why
                   for why in rows["vision_parity:vision"]["reasons"]), rows
        done = vision_built.doit("build:vision")
        assert done.code == 0, done.output
        assert "vision_parity:vision" in done.executed
        assert done.executed <= {"vision_parity:vision", "package:vision-onnx"}, done.executed
    finally:
        image.write_bytes(before)
        unused.unlink()
    assert vision_built.doit("build:vision").code == 0
