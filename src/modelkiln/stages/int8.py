"""int8: `model.onnx` -> `registry_model_int8.onnx`, quantized with onnxruntime as the spec says.

dynamic (the default) stores int8/uint8 weights and quantizes activations at run time: it needs no
data and is the usual choice for transformer encoders on CPU. static calibrates activation
ranges (MinMax) by running the fp32 model over the calibration texts in small padded batches, as
they are served, so the attention-mask path is calibrated on the values it really carries, and
writes a QDQ model. For transformers, static mode usually wants `op_types: [MatMul, Gemm]`:
quantizing every op (the quantizer's default) moves scores far more. `weight_type`,
`per_channel`, `reduce_range` and `op_types` go to the quantizer unchanged.

The plan depends only on the quantization settings (and, for static mode, on the calibration
file and the tokenizer): editing thresholds or parity limits never re-quantizes, and editing
quantization never re-exports.

`quantize: auto` (the default when the spec gives no settings) is a search over a fixed list of
settings scored with the parity gate's own measure (int8_auto). Its choice depends on the
shipped thresholds, the parity limit and rows, and the PyTorch reference, so in auto mode those
are inputs of this stage too: a thresholds edit re-runs the search (and keeps the same choice
when the figures still allow it); nothing else does.
"""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..artifacts import names
from ..artifacts.decisions import MULTI_LABEL, SINGLE_LABEL
from ..errors import BuildError
from ..model.bundle import Bundle, Quantize
from ..paths import Layout
from .base import Report, RunContext, StagePlan, params, stage_plan
from .infer import Batch

NAME = "int8"
DOC = "quantize the ONNX model to int8 with onnxruntime"
READS: tuple[str, ...] = ("onnx", "tokenizer", "weights", "labels", "thresholds")  # auto: all
WRITES: tuple[str, ...] | None = None  # the model plus the external data its report names (graph.remote.declared)
OPTIONAL: tuple[str, ...] = ()  # outputs a run may leave out (stages.base.Stage)
TOOLS: tuple[str, ...] = ("onnx", "onnxruntime", "numpy", "torch", "transformers")  # auto
PLATFORM: str | None = "cpu-int8"
CODE_VERSION = "1"
OUTPUT = names.ONNX_INT8
CALIBRATION_ROWS = 256  # static mode: activation ranges from at most this many texts
CALIBRATION_BATCH = 8  # padded batches, as served: the attention-mask path sees its real range


# A task kind's int8 default (`quantize: auto` or no settings) fuses the encoder's subgraphs with
# onnxruntime's transformer optimizer before quantizing: attention into Attention (then
# QAttention), embeddings + LayerNorm into EmbedLayerNormalization, residual + LayerNorm into
# SkipLayerNormalization, bias + GELU into BiasGelu. Unfused, dynamic quantization wraps every
# MatMul in DynamicQuantizeLinear/MatMulInteger/Cast/Mul nodes and blocks the fusions onnxruntime
# makes itself when it loads the fp32 model, so small encoders got bigger graphs and no speed-up
# (bench/README.md, Model kinds). Decoders (text-generation) keep the plain default.
KIND_FUSE = {"feature-extraction": "bert", "token-classification": "bert",
             "image-classification": "vit"}


def settings(bundle: Bundle) -> Quantize:
    """The settings this stage uses: the spec's. `auto` searches only for classifiers, whose
    parity gate measures decisions at thresholds; other task kinds get the plain dynamic
    default, fused first where KIND_FUSE names the task."""
    assert bundle.onnx is not None
    q = bundle.onnx.quantize
    if q.mode == "auto" and bundle.source.task not in (MULTI_LABEL, SINGLE_LABEL):
        return replace(q, mode="dynamic", per_channel=True, reduce_range=False, op_types=None,
                       fuse=KIND_FUSE.get(bundle.source.task, ""))
    return q


def plan(bundle: Bundle, layout: Layout) -> list[StagePlan]:
    if bundle.onnx is None:
        return []
    q = settings(bundle)
    if q.mode == "auto":
        return [_auto_plan(bundle, layout)]
    static = q.mode == "static"
    values: dict[str, Any] = {"mode": q.mode, "weight_type": q.weight_type,
                              "per_channel": q.per_channel, "reduce_range": q.reduce_range,
                              "op_types": list(q.op_types) if q.op_types else None}
    if q.exclude_nodes:  # only when set, so the plans of specs without it stay as they were
        values["exclude_nodes"] = list(q.exclude_nodes)
    if q.fuse:  # likewise
        values["fuse"] = q.fuse
    if static:  # the texts' bytes are an input; how they are cut into tokens is a parameter
        values.update(max_length=bundle.thresholds.max_length, rows=CALIBRATION_ROWS)
    return [stage_plan(
        bundle, layout, "int8", doc=f"quantize {bundle.name}'s ONNX model to int8 ({q.mode})",
        inputs=(q.calibration,) if static and q.calibration else (),
        upstream=("onnx", "tokenizer") if static else ("onnx",),
        params=params(CODE_VERSION, quantize=values), backend="onnx")]


def _auto_plan(bundle: Bundle, layout: Layout) -> StagePlan:
    """The search scores candidates as the parity gate does, so it reads what parity reads."""
    from .int8_auto import CANDIDATES_VERSION

    assert bundle.onnx is not None
    p, cal = bundle.onnx.parity, bundle.thresholds.calibration
    files = {f for f in (cal, bundle.onnx.quantize.calibration) if f is not None}
    return stage_plan(
        bundle, layout, "int8",
        doc=f"quantize {bundle.name}'s ONNX model to int8 (auto: the smallest of a fixed list "
            f"within {p.max_decision_flip_rate:g} decision flips)",
        inputs=tuple(sorted(files)),
        upstream=("weights", "tokenizer", "labels", "thresholds", "onnx"),
        params=params(CODE_VERSION, quantize={"mode": "auto", "candidates": CANDIDATES_VERSION},
                      max_decision_flip_rate=p.max_decision_flip_rate, samples=p.samples,
                      max_length=bundle.thresholds.max_length, rows=CALIBRATION_ROWS,
                      task=bundle.source.task),
        backend="onnx")


class _TextReader:
    """onnxruntime CalibrationDataReader over tokenized calibration texts, one row per run."""

    def __init__(self, rows: list[Batch]):
        self._rows = iter(rows)

    def get_next(self) -> Batch | None:
        return next(self._rows, None)

    def rewind(self) -> None:  # not needed for MinMax; defined because some versions ask
        pass


def _calibration_rows(ctx: RunContext, q: Quantize, input_names: list[str]) -> list[Batch]:
    import numpy as np

    from .infer import encode, read_calibration

    texts, _ = read_calibration(q.calibration, ctx.bundle.labels.names, limit=CALIBRATION_ROWS)
    tok_dir = ctx.up("tokenizer") / names.TOKENIZER_DIR
    rows = []
    for start in range(0, len(texts), CALIBRATION_BATCH):
        enc = encode(tok_dir, texts[start:start + CALIBRATION_BATCH],
                     ctx.bundle.thresholds.max_length)
        missing = [n for n in input_names if n not in enc]
        if missing:
            raise BuildError(f"the ONNX model needs inputs {missing} the tokenizer does not give")
        rows.append({n: np.asarray(enc[n], dtype=np.int64) for n in input_names})
    return rows


def _quantize(ctx: RunContext, q: Quantize, src: Path, dst: Path, large: bool) -> None:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    from .infer import ort_session

    weight_type = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[q.weight_type]
    op_types = list(q.op_types) if q.op_types else None
    exclude = list(q.exclude_nodes) or None
    if q.mode == "dynamic":
        extra: dict[str, Any] = {}
        if q.fuse:
            src = _fuse(q.fuse, src, dst.parent / "fused" / src.name, large)
            # the fused contrib ops' outputs carry no inferred type: they are float
            extra["DefaultTensorType"] = 1  # onnx.TensorProto.FLOAT
        quantize_dynamic(src, dst, op_types_to_quantize=op_types, per_channel=q.per_channel,
                         reduce_range=q.reduce_range, weight_type=weight_type,
                         nodes_to_exclude=exclude, use_external_data_format=large,
                         extra_options=extra)
        return
    names = [i.name for i in ort_session(src).get_inputs()]
    reader = _TextReader(_calibration_rows(ctx, q, names))
    quantize_static(src, dst, reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=op_types,
                    per_channel=q.per_channel, reduce_range=q.reduce_range,
                    activation_type=QuantType.QUInt8, weight_type=weight_type,
                    nodes_to_exclude=exclude, calibrate_method=CalibrationMethod.MinMax,
                    use_external_data_format=large)


def _fuse(model_type: str, src: Path, dst: Path, large: bool) -> Path:
    """`src` with onnxruntime's transformer fusions for `model_type` (heads and hidden size read
    from the graph), written to `dst`; the python fusions only (opt_level 0): the fp32 graph is
    already what the exporter made, and onnxruntime applies its own level when it loads."""
    from onnxruntime.transformers.optimizer import optimize_model

    dst.parent.mkdir(exist_ok=True)
    fused = optimize_model(str(src), model_type=model_type, opt_level=0, use_gpu=False)
    fused.save_model_to_file(str(dst), use_external_data_format=large)
    return dst


def _op_counts(path: Path) -> dict[str, int]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def quantize_into(ctx: RunContext, q: Quantize, src: Path, out: Path) -> list[str]:
    """Quantize `src` with `q` into directory `out` (the model and any external data); returns
    the external data file names. A quantizer failure is one BuildError line."""
    from .onnx import check_external_data

    scratch = out / ".quantize"
    scratch.mkdir()
    dst = scratch / OUTPUT
    # the quantizer writes a shape-inferred copy beside its input: give it an input here, never
    # the onnx stage's own directory (another task may be reading it). The graph is hard-linked;
    # external data is copied, because onnx refuses to load a data file with several links (its
    # guard against hardlink attacks)
    linked = scratch / "input"
    linked.mkdir()
    try:
        os.link(src, linked / src.name)
    except OSError:  # another file system: a copy
        shutil.copyfile(src, linked / src.name)
    for name in check_external_data(src):
        shutil.copyfile(src.parent / name, linked / name)
    src = linked / src.name
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's "consider pre-processing" nag
    try:
        try:
            _quantize(ctx, q, src, dst, large=False)
        except ValueError as exc:  # the int8 protobuf itself is over 2 GB: external data
            if "2GB" not in str(exc) and "2 GB" not in str(exc):
                raise
            _quantize(ctx, q, src, dst, large=True)
    except BuildError:
        raise
    except Exception as exc:
        raise BuildError(f"quantization ({q.mode}) failed: {type(exc).__name__}: "
                         f"{str(exc)[:400]}; check backends.onnx.quantize "
                         "(op_types, weight_type, exclude_nodes)") from None
    finally:
        logging.getLogger().setLevel(quiet)
    data_files = check_external_data(dst)
    for name in [OUTPUT, *data_files]:
        shutil.move(str(scratch / name), str(out / name))
    shutil.rmtree(scratch)
    return data_files


def run(ctx: RunContext) -> Report:
    from .onnx import MODEL, check_external_data

    q = settings(ctx.bundle)
    src = ctx.up("onnx") / MODEL
    fp32_files = [MODEL, *check_external_data(src)]
    fp32_bytes = sum((src.parent / n).stat().st_size for n in fp32_files)
    auto: Report | None = None
    if q.mode == "auto":
        from .int8_search import run_search

        q, auto = run_search(ctx, src, fp32_bytes)
        data_files = check_external_data(ctx.out / OUTPUT)
    else:
        ctx.log(f"int8:{ctx.bundle.name}: quantizing ({q.mode}, {q.weight_type}, "
                f"per_channel={q.per_channel}, reduce_range={q.reduce_range}"
                f"{f', fused as {q.fuse}' if q.fuse else ''})")
        data_files = quantize_into(ctx, q, src, ctx.out)
    size = sum((ctx.out / n).stat().st_size for n in [OUTPUT, *data_files])
    ops = _op_counts(ctx.out / OUTPUT)
    ctx.log(f"int8:{ctx.bundle.name}: {fp32_bytes / 1e6:.1f} MB -> {size / 1e6:.1f} MB")
    report: Report = {"mode": q.mode, "weight_type": q.weight_type,
                      "per_channel": q.per_channel, "reduce_range": q.reduce_range,
                      "op_types": list(q.op_types or ()), "bytes": size,
                      "fp32_bytes": fp32_bytes, "size_ratio": round(size / fp32_bytes, 4),
                      "external_data": data_files, "ops": ops}
    if q.exclude_nodes:
        report["exclude_nodes"] = list(q.exclude_nodes)
    if q.fuse:
        report["fuse"] = q.fuse
    if auto is not None:
        report["auto"] = auto
    return report
