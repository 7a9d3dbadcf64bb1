"""vision_parity: an image classifier's ONNX models must agree with PyTorch on the calibration
images, or the bundle fails.

The calibration rows name image files (`{"image": "images/a.png", "labels": ["red"]}`, paths
relative to the calibration file). Each image goes through the bundle's own image processor,
then PyTorch, fp32 ONNX (all at once) and int8 ONNX (one image at a time, as served). The figures
and gates are the text classifiers' (stages/parity.compare and gate, single-label rule): fp32
logits within `parity.atol`, int8 decision flips at the shipped thresholds at most
`parity.max_decision_flip_rate`, top-1 agreement reported beside them.

The plan's inputs are the calibration file and the image files its rows name (the first
`parity.samples` rows when set: the images the gate reads), so an image edited in place reruns
this gate and nothing else. That makes this plan read the calibration file (names only, one JSON
parse per line, never an image), remembered per file by its size, mtime and inode so repeated
plans in one process parse it once. Rows the gate would refuse, and names that are not a file
beside the calibration file, are left out there: `run` reports them with their line number.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..artifacts import names
from ..errors import BuildError
from ..model.bundle import Bundle
from ..model.calibration import json_lines
from ..model.files import BadFile
from ..paths import Layout
from .base import Report, RunContext, StagePlan, params, stage_plan

REPORT = "vision_parity.json"
NAME = "vision_parity"
DOC = "gate an image classifier: fp32 logits and int8 decisions vs PyTorch on calibration images"
READS: tuple[str, ...] = ("weights", "image_processor", "labels", "thresholds", "onnx", "int8")
WRITES: tuple[str, ...] | None = (REPORT,)
OPTIONAL: tuple[str, ...] = ()  # outputs a run may leave out (stages.base.Stage)
TOOLS: tuple[str, ...] = ("torch", "transformers", "onnxruntime", "pillow")
PLATFORM: str | None = None
CODE_VERSION = "1"


def plan(bundle: Bundle, layout: Layout) -> list[StagePlan]:
    from ..model.kinds import IMAGE_CLASSIFICATION

    cal = bundle.thresholds.calibration
    if bundle.source.task != IMAGE_CLASSIFICATION or bundle.onnx is None or cal is None:
        return []
    p = bundle.onnx.parity
    return [stage_plan(
        bundle, layout, "vision_parity",
        doc=f"parity gates for {bundle.name} on calibration images: fp32 logits within "
            f"{p.atol:g}, int8 decision flips at most {p.max_decision_flip_rate:g}",
        inputs=(cal, *image_inputs(cal, p.samples)), upstream=READS,
        params=params(CODE_VERSION, atol=p.atol, max_decision_flip_rate=p.max_decision_flip_rate,
                      samples=p.samples), backend="onnx")]


_NAMED: dict[tuple[str, int | None], tuple[tuple[int, int, int], tuple[Path, ...]]] = {}


def image_inputs(path: Path, limit: int | None) -> tuple[Path, ...]:
    """The image files the first `limit` calibration rows name, sorted, each once (see the
    module doc); () when the calibration file cannot be read (the run says why)."""
    try:
        st = path.stat()
    except OSError:
        return ()
    key, stamp = (str(path), limit), (st.st_size, st.st_mtime_ns, st.st_ino)
    known = _NAMED.get(key)
    if known is not None and known[0] == stamp:
        return known[1]
    base = os.path.normpath(path.parent)
    found: set[Path] = set()
    try:
        for _where, row in json_lines(path, limit):
            name = row.get("image") if isinstance(row, dict) else None
            if not isinstance(name, str) or not name:
                continue
            image = os.path.normpath(os.path.join(base, name))
            if image.startswith(base + os.sep) and os.path.isfile(image):
                found.add(Path(image))
    except BadFile:  # an unreadable file or line: the run names it; plan what was readable
        pass
    named = tuple(sorted(found))
    _NAMED[key] = (stamp, named)
    return named


def read_images(path: Path, labels: tuple[str, ...], limit: int | None) -> tuple[list[Path], Any]:
    """Image paths (checked to stay beside the calibration file) and the label index per row."""
    base = path.parent.resolve()
    images: list[Path] = []
    truth: list[list[int]] = []
    try:
        for where, row in json_lines(path, limit):
            name = row.get("image") if isinstance(row, dict) else None
            found = row.get("labels") if isinstance(row, dict) else None
            if not isinstance(name, str) or not isinstance(found, list) or \
                    any(lab not in labels for lab in found):
                raise BuildError(f'{where}: expected {{"image": "<file beside it>", '
                                 f'"labels": [one of {", ".join(labels)}]}}')
            image = (base / name).resolve()
            if not image.is_relative_to(base) or not image.is_file():
                raise BuildError(f"{where}: image {name!r} is not a file under {base}")
            images.append(image)
            truth.append([labels.index(lab) for lab in found])
    except BadFile as exc:
        raise exc.build_error() from None
    if not images:
        raise BuildError(f"{path}: no calibration images")
    return images, truth


def pixels(processor_dir: Path, images: list[Path]) -> Any:
    """The images as the bundle's image processor makes them: float32 pixel_values."""
    import numpy as np
    from PIL import Image
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(str(processor_dir))
    loaded = []
    for path in images:
        with Image.open(path) as img:
            loaded.append(img.convert("RGB"))
    return np.asarray(processor(loaded, return_tensors="np")["pixel_values"], dtype=np.float32)


def torch_logits(weights: Path, values: Any) -> Any:
    import torch
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(str(weights),
                                                            dtype=torch.float32).eval()
    with torch.inference_mode():
        return model(pixel_values=torch.from_numpy(values)).logits.float().numpy()


def onnx_logits(model: Path, values: Any, one_at_a_time: bool) -> Any:
    import numpy as np

    from .infer import ort_session

    session = ort_session(model)
    name = session.get_inputs()[0].name
    if not one_at_a_time:
        return session.run(["logits"], {name: values})[0]
    return np.concatenate([session.run(["logits"], {name: values[i:i + 1]})[0]
                           for i in range(len(values))])


def run(ctx: RunContext) -> Report:
    from ..artifacts.decisions import SINGLE_LABEL
    from .int8 import OUTPUT as INT8
    from .onnx import MODEL
    from .parity import compare, gate

    b, p = ctx.bundle, ctx.onnx.parity
    assert b.thresholds.calibration is not None  # planned only with one
    labels = tuple(json.loads((ctx.up("labels") / names.LABEL_ORDER).read_bytes()))
    cuts = json.loads((ctx.up("thresholds") / names.THRESHOLDS).read_bytes())
    images, _truth = read_images(b.thresholds.calibration, labels, p.samples)
    values = pixels(ctx.up("image_processor"), images)
    ref = torch_logits(ctx.up("weights"), values)
    fp32 = onnx_logits(ctx.up("onnx") / MODEL, values, one_at_a_time=False)
    int8 = onnx_logits(ctx.up("int8") / INT8, values, one_at_a_time=True)
    report = compare(ref, fp32, int8, labels, cuts, SINGLE_LABEL)
    report["limits"] = {"atol": p.atol, "max_decision_flip_rate": p.max_decision_flip_rate}
    failed = gate(report, p.atol, p.max_decision_flip_rate, ctx.onnx.quantize)
    report["gates"] = {g: ("FAIL" if g in failed else "pass") for g in ("fp32", "int8")}
    (ctx.out / REPORT).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    if failed:
        raise BuildError(f"vision parity failed for {b.name}: {'; '.join(failed.values())}")
    ctx.log(f"vision_parity:{b.name}: top-1 agreement {report['int8']['top_label_agreement']:.2%}, "
            f"flips {report['int8']['decision_flip_rate']:.2%}")
    return report
