"""embed_parity: a sentence-embedding bundle's ONNX models must embed as PyTorch does, or it fails.

The reference is computed here, apart from the export: the converted encoder's token vectors
(transformers `AutoModel`), pooled and normalized in numpy as the spec says. So an export that
lost its pooling, pooled the wrong way or forgot the normalization disagrees with it, and the gate
names the figure that moved. On the calibration texts (`embedding.parity.samples` caps them):

- fp32 ONNX: every row's cosine similarity to PyTorch at least `min_fp32_cosine`, and its
  relative difference (|onnx - torch| / |torch|) at most 1e-3, which a lost normalization fails;
- int8 ONNX (one text at a time, as `predict` runs it): every row's cosine at least `min_cosine`,
  and top-k retrieval agreement (each text as a query against the others; the share of PyTorch's
  k nearest neighbours that int8 also ranks in its k nearest, averaged) at least
  `min_topk_agreement`. Retrieval is what an embedding serves; a small cosine loss spread evenly
  can still reorder neighbours, so both are gated.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..artifacts import names
from ..errors import BuildError
from ..model.bundle import Bundle
from ..model.calibration import json_texts
from ..model.files import BadFile
from ..paths import Layout
from .base import Report, RunContext, StagePlan, params, stage_plan

REPORT = "embedding_parity.json"
FP32_RTOL = 1e-3  # fp32 export is exact up to float rounding: a larger relative error is a bug
NAME = "embed_parity"
DOC = "gate a sentence-embedding bundle: cosine and top-k retrieval of fp32/int8 ONNX vs PyTorch"
READS: tuple[str, ...] = ("weights", "tokenizer", "onnx", "int8")
WRITES: tuple[str, ...] | None = (REPORT,)
OPTIONAL: tuple[str, ...] = ()  # outputs a run may leave out (stages.base.Stage)
TOOLS: tuple[str, ...] = ("torch", "transformers", "tokenizers", "onnxruntime")
PLATFORM: str | None = None
CODE_VERSION = "1"


def plan(bundle: Bundle, layout: Layout) -> list[StagePlan]:
    e = bundle.embedding
    if e is None or bundle.onnx is None:
        return []
    p = e.parity
    return [stage_plan(
        bundle, layout, "embed_parity",
        doc=f"embedding parity for {bundle.name}: int8 cosine >= {p.min_cosine:g}, top-{p.top_k} "
            f"agreement >= {p.min_topk_agreement:g}",
        inputs=(e.calibration,), upstream=("weights", "tokenizer", "onnx", "int8"),
        params=params(CODE_VERSION, pooling=e.pooling, normalize=e.normalize,
                      max_length=e.max_length, min_cosine=p.min_cosine,
                      min_fp32_cosine=p.min_fp32_cosine, top_k=p.top_k,
                      min_topk_agreement=p.min_topk_agreement, samples=p.samples),
        backend="onnx")]


def read_texts(path: Path, limit: int | None) -> list[str]:
    """The calibration texts: JSONL rows {"text": ...} (other keys are ignored). The classifiers'
    reader (model/calibration.py) insists on a `labels` list, which an embedding has none of."""
    try:
        return json_texts(path, ("text",), '{"text": "left knee MRI"}', limit)
    except BadFile as exc:
        raise exc.build_error() from None


def pool(hidden: Any, mask: Any, pooling: str, normalize: bool) -> Any:
    """Token vectors -> one vector per row, in numpy (the reference side of the gate)."""
    import numpy as np

    hidden = np.asarray(hidden, dtype=np.float64)
    if pooling == "cls":
        vec = hidden[:, 0]
    else:
        m = np.asarray(mask, dtype=np.float64)[:, :, None]
        vec = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    if normalize:
        vec = vec / np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12)
    return vec


def cosines(a: Any, b: Any) -> Any:
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    den = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return (a * b).sum(1) / den


def relative_diffs(ref: Any, got: Any) -> Any:
    """Each row's |got - ref| / |ref|: cosine cannot see a lost normalization (a scale), this can."""
    import numpy as np

    ref, got = np.asarray(ref, dtype=np.float64), np.asarray(got, dtype=np.float64)
    return np.linalg.norm(got - ref, axis=1) / np.maximum(np.linalg.norm(ref, axis=1), 1e-12)


def topk_agreement(ref: Any, got: Any, k: int) -> float:
    """Mean share of each row's k nearest other rows (cosine) that both sides agree on."""
    import numpy as np

    def neighbours(x: Any) -> Any:
        x = np.asarray(x, dtype=np.float64)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        sim = x @ x.T
        np.fill_diagonal(sim, -np.inf)
        return np.argsort(-sim, axis=1, kind="stable")[:, :k]

    k = max(1, min(k, len(ref) - 1))
    a, b = neighbours(ref), neighbours(got)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b, strict=True)]))


def _r(x: float) -> float:
    return float(f"{float(x):.6g}")


def compare(ref: Any, fp32: Any, int8: Any, top_k: int) -> Report:
    """The gate's figures (pure numpy): cosines and retrieval agreement of each side."""
    out: Report = {"rows": len(ref)}
    for name, got in (("fp32", fp32), ("int8", int8)):
        cos = cosines(ref, got)
        out[name] = {"min_cosine": _r(cos.min()), "mean_cosine": _r(cos.mean()),
                     "max_rel_diff": _r(relative_diffs(ref, got).max()),
                     "topk_agreement": _r(topk_agreement(ref, got, top_k))}
    return out


def failures(report: Report, bundle: Bundle) -> list[str]:
    p = bundle.embedding.parity if bundle.embedding else None
    if p is None:
        return []
    fp32, int8 = report["fp32"], report["int8"]
    found = []
    if fp32["min_cosine"] < p.min_fp32_cosine or fp32["max_rel_diff"] > FP32_RTOL:
        found.append(f"fp32 ONNX vs PyTorch: min cosine {fp32['min_cosine']:.6f} (limit "
                     f"{p.min_fp32_cosine:g}), max relative difference {fp32['max_rel_diff']:.3g} "
                     f"(limit {FP32_RTOL:g}): an export bug, check the graph's pooling and "
                     "normalization")
    if int8["min_cosine"] < p.min_cosine:
        found.append(f"int8 min cosine {int8['min_cosine']:.6f} < {p.min_cosine:g}")
    if int8["topk_agreement"] < p.min_topk_agreement:
        found.append(f"int8 top-{p.top_k} retrieval agreement {int8['topk_agreement']:.2%} < "
                     f"{p.min_topk_agreement:.2%}")
    return found


def reference(weights: Path, batch: dict[str, Any], pooling: str, normalize: bool) -> Any:
    """PyTorch token vectors, pooled in numpy."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(weights), dtype=torch.float32).eval()
    with torch.inference_mode():
        hidden = model(**{k: torch.from_numpy(v) for k, v in batch.items()}).last_hidden_state
    return pool(hidden.float().numpy(), batch["attention_mask"], pooling, normalize)


def onnx_vectors(model: Path, batch: dict[str, Any], one_at_a_time: bool) -> Any:
    """The graph's pooled vectors for an encoded batch (int8: row by row, unpadded)."""
    import numpy as np

    from .infer import ort_session

    session = ort_session(model)
    wanted = [i.name for i in session.get_inputs()]
    if not one_at_a_time:
        return session.run(None, {n: batch[n] for n in wanted})[0]
    rows = []
    for i in range(len(batch["input_ids"])):
        keep = batch["attention_mask"][i].astype(bool)
        rows.append(session.run(None, {n: batch[n][i:i + 1, keep] for n in wanted})[0][0])
    return np.stack(rows)


def run(ctx: RunContext) -> Report:
    from .infer import encode
    from .int8 import OUTPUT as INT8
    from .onnx import MODEL

    e = ctx.bundle.embedding
    if e is None:
        raise BuildError(f"{ctx.plan.task}: the spec has no embedding section; run `kiln plan` again")
    texts = read_texts(e.calibration, e.parity.samples)
    if len(texts) < 2:
        raise BuildError(f"{e.calibration}: the embedding gate needs at least 2 texts, found "
                         f"{len(texts)}")
    batch = encode(ctx.up("tokenizer") / names.TOKENIZER_DIR, texts, e.max_length)
    ref = reference(ctx.up("weights"), batch, e.pooling, e.normalize)
    fp32 = onnx_vectors(ctx.up("onnx") / MODEL, batch, one_at_a_time=False)
    int8 = onnx_vectors(ctx.up("int8") / INT8, batch, one_at_a_time=True)
    if fp32.shape != ref.shape:
        raise BuildError(f"the ONNX model answers vectors of shape {list(fp32.shape)}, PyTorch "
                         f"{list(ref.shape)}; check the export's pooling")
    report = compare(ref, fp32, int8, e.parity.top_k)
    report["limits"] = {"min_cosine": e.parity.min_cosine, "min_fp32_cosine": e.parity.min_fp32_cosine,
                        "top_k": e.parity.top_k, "min_topk_agreement": e.parity.min_topk_agreement}
    (ctx.out / REPORT).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    bad = failures(report, ctx.bundle)
    if bad:
        raise BuildError(f"embedding parity failed for {ctx.bundle.name}: {'; '.join(bad)}; "
                         "try backends.onnx.quantize per_channel: true or op_types: [MatMul], or "
                         "loosen embedding.parity")
    ctx.log(f"embed_parity:{ctx.bundle.name}: int8 cosine min {report['int8']['min_cosine']:.4f}, "
            f"top-{e.parity.top_k} {report['int8']['topk_agreement']:.2%}")
    return report
