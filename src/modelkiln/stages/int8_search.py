"""The int8 stage's `quantize: auto` run: the parity gate's rows and reference, the candidates
quantized into a scratch directory, the kept one moved into the stage's output.

int8_auto holds the list, the ranking and the messages (light, testable without a model); this
module wires them to onnxruntime, the tokenizer and PyTorch, the way the parity stage scores.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..artifacts import names
from ..errors import BuildError
from ..model.bundle import Quantize
from . import int8_auto
from .base import Report, RunContext

# the op types onnxruntime quantizes when op_types is not given (dynamic: its integer-op list)
DYNAMIC_DEFAULT_OPS = frozenset({"Conv", "MatMul", "Attention", "LSTM", "Gather", "Transpose",
                                 "EmbedLayerNormalization"})


def _quantized_ops(q: Quantize) -> frozenset[str] | None:
    """Op types `q` quantizes; None: every type the quantizer knows (static's own list)."""
    if q.op_types:
        return frozenset(q.op_types)
    return DYNAMIC_DEFAULT_OPS if q.mode == "dynamic" else None


FAILED_RECORD = "quantize_auto.json"  # written only when no candidate passes (int8.failed/)


def cpu_int8() -> str:
    """This CPU's int8 dot-product class, for the record and the failure message: the cache key
    names the class through graph.cachekey.cpu_class, which stages may not import, so the same
    flags are read here (machine, then the widest of VNNI / AVX-512 / AVX2 / ARM dot products)."""
    import platform

    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    found = next((name for flag, name in (("avx512_vnni", "avx512vnni"), ("avx_vnni", "avxvnni"),
                                          ("avx512bw", "avx512, no VNNI"),
                                          ("avx2", "avx2, no VNNI"), ("i8mm", "i8mm"),
                                          ("asimddp", "dotprod")) if flag in flags), "base")
    return f"{platform.machine().lower()} {found}"


def run_search(ctx: RunContext, src: Path, fp32_bytes: int) -> tuple[Quantize, Report]:
    """Run the search; the kept model lands in ctx.out. Returns its settings and the record."""
    import onnx

    from .infer import encode, ort_logits_per_text, read_calibration, torch_logits
    from .int8 import OUTPUT, quantize_into
    from .onnx import check_external_data
    from .parity import compare

    b, p = ctx.bundle, ctx.onnx.parity
    labels = tuple(json.loads((ctx.up("labels") / names.LABEL_ORDER).read_bytes()))
    cuts = json.loads((ctx.up("thresholds") / names.THRESHOLDS).read_bytes())
    texts, _ = read_calibration(b.thresholds.calibration, labels, limit=p.samples)
    batch = encode(ctx.up("tokenizer") / names.TOKENIZER_DIR, texts, b.thresholds.max_length)
    ctx.log(f"int8:{b.name}: quantize: auto, scoring candidates on {len(texts)} rows against "
            "PyTorch at the shipped thresholds")
    ref = torch_logits(ctx.up("weights"), batch)
    graph = onnx.load(str(src), load_external_data=False)
    head = int8_auto.head_nodes(graph)
    types = {n.name: n.op_type for n in graph.graph.node}
    del graph
    external = check_external_data(src)

    def score(out: Path) -> Report:
        return compare(ref, ref, ort_logits_per_text(out / OUTPUT, batch), labels, cuts,
                       b.source.task)

    def quantize(q: Quantize, out: Path) -> None:
        quantize_into(ctx, q, src, out)

    def keep_nodes(q: Quantize, kind: str, reference: Path | None) -> list[str]:
        ops = _quantized_ops(q)
        kept = [n for n in head if ops is None or types[n] in ops]
        if kind == "drifting":
            if reference is None or external:
                return []  # no reduce-range model to compare with, or a model past 2 GB
            drift = int8_auto.drifting_nodes(src, reference / OUTPUT, batch, head)
            kept = sorted(set(kept) | {n for n, _ in drift})
        return kept

    scratch = ctx.out / ".candidates"
    scratch.mkdir()
    limit = p.max_decision_flip_rate
    cands = int8_auto.candidates(ctx.onnx.quantize.calibration)
    try:
        kept, results, best = int8_auto.search(
            cands, quantize, score, keep_nodes, scratch, fp32_bytes, limit,
            lambda line: ctx.log(f"int8:{b.name}: {line}"))
        if kept is None or best is None:  # the figures stay beside the failed output
            (ctx.out / FAILED_RECORD).write_text(json.dumps(
                {"cpu_class": cpu_int8(), "rows": len(texts), "max_decision_flip_rate": limit,
                 "candidates": results}, indent=2) + "\n")
            raise BuildError(f"int8 for {b.name}: " +
                             int8_auto.failure(results, limit, cpu_int8(), best))
        for f in kept.iterdir():
            shutil.move(str(f), str(ctx.out / f.name))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    chosen = next(r["name"] for r in results if r.get("chosen"))
    ctx.log(f"int8:{b.name}: quantize: auto kept {chosen}: {int8_auto.spec_text(best)}")
    record: dict[str, Any] = {"chosen": chosen, "settings": int8_auto.settings_record(best),
                              "spec": int8_auto.spec_text(best), "cpu_class": cpu_int8(),
                              "rows": len(texts), "max_decision_flip_rate": limit,
                              "candidates": results}
    return best, record
