"""TensorRT for the encoder task kinds: what the engine stage builds from, and gates on, per kind.

A classifier's engine takes input_ids/attention_mask (and token_type_ids) in the spec's
`profiles` (batch x sequence) and its gate compares logits and decisions. The encoder kinds
(stages/kinds) go through the same `trt` -> `engines` -> `trtparity` stages; this module says
what differs:

- the optimization profile's input shapes come from the kind's ONNX inputs: the token inputs
  with the sequence range capped at the kind's max length (embedding.max_length,
  entities.max_length), or `pixel_values` as [batch, channels, height, width] with the image
  processor's size (preprocessor_config.json: crop_size when it center-crops, else size);
- the parity rows are the kind's own calibration rows (texts, or images through the image
  processor), and the reference is the fp32 ONNX graph's output (`Kind.output`);
- the gate measures what the task ships: cosine of the engine's embedding to the ONNX one
  (embedding.parity.min_cosine), token tag agreement on the real tokens (entities
  min_agreement; the tags decide the entities), top-1 and decisions at the thresholds for an image
  classifier (the classifiers' gate). The elements gate (atol + rtol·|x|) holds for all.

text-generation plans `trt` only to show it skipped (stages/kinds/generation.py says why).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..artifacts import names
from ..errors import BuildError
from ..model.bundle import Bundle, TensorRT
from ..model.files import BadFile, read_json
from . import kinds
from .base import Report, RunContext

Shapes = dict[str, dict[str, list[int]]]  # input -> min/opt/max shape
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # those the graph has are used
PROCESSOR = "preprocessor_config.json"
MASK = "mask.npy"  # beside engine.npy/onnx.npy: the real tokens (token-classification)
_LEVELS = ("min", "opt", "max")


def task(bundle: Bundle) -> str | None:
    """The encoder kind's task (None: a classifier, or a kind without an engine)."""
    from ..model.kinds import FEATURE_EXTRACTION, IMAGE_CLASSIFICATION, TOKEN_CLASSIFICATION

    kind = kinds.kind_of(bundle)
    if kind is None or kind.task not in (FEATURE_EXTRACTION, TOKEN_CLASSIFICATION,
                                         IMAGE_CLASSIFICATION):
        return None
    return kind.task


def max_length(bundle: Bundle) -> int:
    """The token budget of a text kind (0 for an image classifier)."""
    if bundle.embedding is not None:
        return bundle.embedding.max_length
    if bundle.entities is not None:
        return bundle.entities.max_length
    return 0


def image_shape(bundle: Bundle) -> tuple[int, int, int]:
    """(channels, height, width) of pixel_values as the checkpoint's image processor makes them."""
    path = bundle.source.checkpoint / PROCESSOR
    try:
        proc = read_json(path)
        config = read_json(bundle.source.checkpoint / "config.json")
    except BadFile as exc:
        raise exc.build_error() from None
    size = proc.get("crop_size") if proc.get("do_center_crop") and proc.get("crop_size") \
        else proc.get("size")
    if isinstance(size, int):
        h = w = size
    elif isinstance(size, dict) and "height" in size and "width" in size:
        h, w = int(size["height"]), int(size["width"])
    elif isinstance(size, dict) and "shortest_edge" in size:
        h = w = int(size["shortest_edge"])
    else:
        raise BuildError(f"{path}: no image size (size.height/width, size.shortest_edge or an "
                         "integer size) to shape the TensorRT profile's pixel_values")
    return int(config.get("num_channels", 3)), h, w


def input_shapes(bundle: Bundle, t: TensorRT) -> Shapes | None:
    """The optimization profile's shapes per input for an encoder kind (None: a classifier,
    whose profile is the spec's batch x sequence for every input)."""
    from ..model.kinds import IMAGE_CLASSIFICATION

    which = task(bundle)
    if which is None:
        return None
    if which == IMAGE_CLASSIFICATION:
        c, h, w = image_shape(bundle)
        return {"pixel_values": {lv: [n, c, h, w] for lv, n in zip(_LEVELS, t.batch, strict=True)}}
    cap = max_length(bundle)
    seq = [min(s, cap) for s in t.sequence]
    return {name: {lv: [n, s] for lv, n, s in zip(_LEVELS, t.batch, seq, strict=True)}
            for name in TEXT_INPUTS}


def lint_profiles(shapes: Shapes) -> Any:
    """Batch and second-axis ranges for onnx_lint (the second axis is channels for pixel_values)."""
    first = next(iter(shapes.values()))
    return {"batch": {lv: first[lv][0] for lv in _LEVELS},
            "sequence": {lv: first[lv][1] for lv in _LEVELS}}


def calibration_inputs(bundle: Bundle, t: TensorRT) -> tuple[Path, ...]:
    """The files the parity rows come from (the trt plan's inputs)."""
    from .vision_parity import image_inputs

    if bundle.embedding is not None:
        return (bundle.embedding.calibration,)
    if bundle.entities is not None:
        return (bundle.entities.calibration,)
    cal = bundle.thresholds.calibration
    return (cal, *image_inputs(cal, t.parity.samples)) if cal else ()


def reads(bundle: Bundle) -> str:
    """What turns calibration rows into the graph's inputs: the tokenizer or image processor."""
    from ..model.kinds import IMAGE_CLASSIFICATION

    return "image_processor" if task(bundle) == IMAGE_CLASSIFICATION else "tokenizer"


def parity_rows(ctx: RunContext, t: TensorRT) -> dict[str, Any]:
    """The kind's calibration rows as the graph's inputs, within the profile's ranges."""
    from .embed_parity import read_texts
    from .infer import encode

    b = ctx.bundle
    if b.embedding is not None or b.entities is not None:
        cal = b.embedding.calibration if b.embedding is not None else \
            b.entities.calibration  # type: ignore[union-attr]
        texts = read_texts(cal, t.parity.samples)
        length = min(max_length(b), t.sequence[2])
        return dict(encode(ctx.up("tokenizer") / names.TOKENIZER_DIR, texts, length))
    from .vision_parity import pixels, read_images

    cal = b.thresholds.calibration
    if cal is None:
        raise BuildError(f"{b.spec_path.name}: the TensorRT gate needs thresholds.calibration "
                         "(the calibration images)")
    images, _ = read_images(cal, tuple(b.labels.names), t.parity.samples)
    return {"pixel_values": pixels(ctx.up("image_processor"), images)}


def onnx_outputs(model: Path, batch: dict[str, Any], output: str, chunk: int = 64) -> Any:
    """The ONNX graph's `output` over the batch (the inputs it has, in their own dtypes)."""
    import numpy as np

    from .infer import ort_session

    session = ort_session(model)
    feed = {i.name: np.asarray(batch[i.name],
                               dtype=np.float32 if "float" in i.type else np.int64)
            for i in session.get_inputs()}
    n = len(next(iter(feed.values())))
    return np.concatenate([session.run([output], {k: v[s:s + chunk] for k, v in feed.items()})[0]
                           for s in range(0, n, chunk)]).astype(np.float32)


def _r(x: Any) -> float:
    return float(f"{float(x):.6g}")


def compare(bundle: Bundle, reference: Any, engine: Any, mask: Any, atol: float,
            rtol: float) -> Report:
    """An encoder kind's engine against the fp32 ONNX output in the task's measure (pure numpy);
    `gates` names each gate's failure (empty: passed). Image classifiers use trtparity.compare."""
    import numpy as np

    if engine.shape != reference.shape:
        raise BuildError(f"the engine gave an output of shape {list(engine.shape)}, the ONNX "
                         f"model {list(reference.shape)}; rebuild trt")
    diff = np.abs(engine - reference)
    outside = diff > atol + rtol * np.abs(reference)
    report: Report = {"rows": len(reference), "max_abs_diff": _r(diff.max()),
                      "outside_tolerance": int(outside.sum()), "elements": int(outside.size)}
    failed: dict[str, str] = {}
    if report["outside_tolerance"]:
        failed["elements"] = (f"{report['outside_tolerance']} of {report['elements']} outputs "
                              f"differ from ONNX fp32 by more than {atol:g} + {rtol:g}·|x| (max "
                              f"{report['max_abs_diff']:.3g}); try precision: fp32, or raise "
                              "backends.tensorrt.parity.atol/rtol if this is rounding")
    if bundle.embedding is not None:
        from .embed_parity import cosines

        cos = cosines(reference, engine)
        limit = bundle.embedding.parity.min_cosine
        report.update(measure="cosine", min_cosine=_r(cos.min()), mean_cosine=_r(cos.mean()),
                      limit=limit)
        if cos.min() < limit:
            failed["cosine"] = (f"the engine's embedding has cosine {cos.min():.4f} to the ONNX "
                                f"one on its worst row, under embedding.parity.min_cosine "
                                f"{limit:g}; try precision: fp32")
    else:
        real = np.asarray(mask, dtype=bool) if mask is not None else \
            np.ones(reference.shape[:2], dtype=bool)
        same = reference.argmax(-1) == engine.argmax(-1)
        agree = float(same[real].mean()) if real.any() else 1.0
        limit = bundle.entities.min_agreement if bundle.entities is not None else 1.0
        report.update(measure="token tag agreement", tag_agreement=_r(agree),
                      tokens=int(real.sum()), limit=limit)
        if agree < limit:
            failed["tags"] = (f"the engine tags {1 - agree:.2%} of the real tokens otherwise than "
                              f"ONNX fp32 (agreement {agree:.2%}, under entities.parity."
                              f"min_agreement {limit:g}); try precision: fp32")
    report["failures"] = failed
    return report


def card_lines(reports: dict[str, Report]) -> list[str]:
    """The model card's TensorRT lines of an encoder kind's tensorrt bundle ([] for the others)."""
    lines = []
    for sm, r in sorted(((reports.get("trtparity") or {}).get("engines") or {}).items()):
        if "min_cosine" in r:
            measure = f"cosine min {r['min_cosine']:.4f}, mean {r['mean_cosine']:.4f}"
        elif "tag_agreement" in r:
            measure = f"token tag agreement {r['tag_agreement']:.2%} over {r['tokens']} tokens"
        else:
            measure = (f"top-1 agreement {r['top_label_agreement']:.2%}, decision flip rate "
                       f"{r['decision_flip_rate']:.2%}")
        diff = r.get("max_abs_diff", r.get("max_abs_logit_diff", 0.0))
        lines.append(f"- TensorRT engine {sm} vs fp32 ONNX on {r['rows']} calibration rows: "
                     f"{measure}; max |diff| {diff:.3g}")
    return lines
