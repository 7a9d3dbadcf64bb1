"""The int8 stage's `quantize: auto` run: the parity gate's rows and reference, the candidates
quantized into a scratch directory, the kept one moved into the stage's output.

int8_auto holds the list, the ranking and the messages (light, testable without a model); this
module wires them to onnxruntime, the tokenizer and PyTorch, the way the parity stage scores.

A memo beside the stage's output (build/<name>/.int8-auto/) keeps what does not depend on the
thresholds: each candidate's size and int8 logits on the rows, the PyTorch reference logits,
the drifting nodes, and the last kept model, each under the sha256 of everything it was made
from (fp32 model bytes, weights, encoded rows, settings, onnxruntime/torch versions, this CPU's
int8 class, the list's version). The search reruns on a thresholds edit, since its measure is
at the thresholds, and the memo turns that rerun into arithmetic on stored logits plus, when the
pick moves, one quantization. A memo entry that cannot be read is a miss; deleting the
directory only costs time.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
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
MEMO = ".int8-auto"  # beside the stage's output directory (see the module docstring)


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


class _Memo:
    """Files under one directory, named by key; a damaged or missing entry is a miss."""

    def __init__(self, directory: Path):
        self.dir = directory

    def key(self, **parts: Any) -> str:
        from ..artifacts.digest import canonical_json, sha256_bytes

        return sha256_bytes(canonical_json(parts))[:32]

    def load(self, name: str) -> Any | None:
        import numpy as np

        path = self.dir / name
        try:
            if name.endswith(".npy"):
                return np.load(path, allow_pickle=False)
            return json.loads(path.read_bytes())
        except (OSError, ValueError, EOFError):  # missing, damaged or cut short: a miss
            return None

    def save(self, name: str, value: Any) -> None:
        import os

        import numpy as np

        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{name}.tmp"
        with open(tmp, "wb") as f:
            if name.endswith(".npy"):
                np.save(f, value, allow_pickle=False)
            else:
                f.write(json.dumps(value).encode())
        os.replace(tmp, self.dir / name)


def _rows_digest(batch: dict[str, Any]) -> str:
    import numpy as np

    from ..artifacts.digest import sha256_bytes

    parts = b"".join(k.encode() + repr(np.asarray(v).shape).encode() +
                     np.ascontiguousarray(v, dtype=np.int64).tobytes() for k, v in sorted(batch.items()))
    return sha256_bytes(parts)


def run_search(ctx: RunContext, src: Path, fp32_bytes: int) -> tuple[Quantize, Report]:
    """Run the search; the kept model lands in ctx.out. Returns its settings and the record."""
    import onnx

    from .base import tool_versions
    from .infer import encode, ort_logits_per_text, read_calibration, torch_logits
    from .int8 import CODE_VERSION, OUTPUT, quantize_into
    from .onnx import check_external_data
    from .parity import compare

    b, p = ctx.bundle, ctx.onnx.parity
    labels = tuple(json.loads((ctx.up("labels") / names.LABEL_ORDER).read_bytes()))
    cuts = json.loads((ctx.up("thresholds") / names.THRESHOLDS).read_bytes())
    texts, _ = read_calibration(b.thresholds.calibration, labels, limit=p.samples)
    batch = encode(ctx.up("tokenizer") / names.TOKENIZER_DIR, texts, b.thresholds.max_length)
    ctx.log(f"int8:{b.name}: quantize: auto, scoring candidates on {len(texts)} rows against "
            "PyTorch at the shipped thresholds")
    external = check_external_data(src)
    memo = _Memo(ctx.plan.out_dir.parent / MEMO)
    rows = _rows_digest(batch)
    tools = tool_versions("onnxruntime", "onnx", "torch", "transformers")
    weights = {f.name: ctx.cache.digest(f) for f in sorted(ctx.up("weights").iterdir())
               if f.is_file()}
    base = memo.key(fp32={n: ctx.cache.digest(src.parent / n) for n in [src.name, *external]},
                    rows=rows, tools=tools, cpu=cpu_int8(), code=CODE_VERSION,
                    candidates=int8_auto.CANDIDATES_VERSION)
    ref_name = f"ref-{memo.key(weights=weights, rows=rows, tools=tools, cpu=cpu_int8())}.npy"
    ref = memo.load(ref_name)
    if ref is None:
        ref = torch_logits(ctx.up("weights"), batch)
        memo.save(ref_name, ref)
    graph = onnx.load(str(src), load_external_data=False)
    head = int8_auto.head_nodes(graph)
    types = {n.name: n.op_type for n in graph.graph.node}
    del graph
    scratch = ctx.out / ".candidates"
    scratch.mkdir()
    produced: dict[Quantize, Path] = {}  # quantized in this run, in scratch

    def made(q: Quantize) -> Path:
        if q not in produced:
            ctx.log(f"int8:{b.name}: quantizing {int8_auto.spec_text(q)}")
            out = scratch / f"c{len(produced)}"
            out.mkdir()
            quantize_into(ctx, q, src, out)
            produced[q] = out
        return produced[q]

    def key_of(q: Quantize) -> str:
        return memo.key(base=base, settings=int8_auto.settings_record(q))

    def evaluate(q: Quantize) -> tuple[int, Report]:
        key = key_of(q)
        size, logits = memo.load(f"cand-{key}.json"), memo.load(f"cand-{key}.npy")
        if not isinstance(size, int) or logits is None or len(logits) != len(ref):
            out = made(q)
            size = sum(f.stat().st_size for f in out.iterdir())
            logits = ort_logits_per_text(out / OUTPUT, batch)
            memo.save(f"cand-{key}.npy", logits)
            memo.save(f"cand-{key}.json", size)
        return size, compare(ref, ref, logits, labels, cuts, b.source.task)

    def keep_nodes(q: Quantize, kind: str) -> list[str]:
        ops = _quantized_ops(q)
        kept = [n for n in head if ops is None or types[n] in ops]
        if kind == "drifting":
            if external:
                return []  # a model past 2 GB: no in-memory copies with extra outputs
            name = f"drift-{memo.key(base=base, head=head)}.json"
            drift = memo.load(name)
            if not isinstance(drift, list):
                drift = [n for n, _ in int8_auto.drifting_nodes(src, made(q) / OUTPUT, batch,
                                                                head)]
                memo.save(name, drift)
            kept = sorted(set(kept) | set(drift))
        return kept

    limit = p.max_decision_flip_rate
    cands = int8_auto.candidates(ctx.onnx.quantize.calibration)
    try:
        results, best = int8_auto.search(cands, evaluate, keep_nodes, fp32_bytes, limit,
                                         lambda line: ctx.log(f"int8:{b.name}: {line}"))
        if best is None or not any(r.get("chosen") for r in results):
            # the figures stay beside the failed output
            (ctx.out / FAILED_RECORD).write_text(json.dumps(
                {"cpu_class": cpu_int8(), "rows": len(texts), "max_decision_flip_rate": limit,
                 "candidates": results}, indent=2) + "\n")
            raise BuildError(f"int8 for {b.name}: " +
                             int8_auto.failure(results, limit, cpu_int8(), best))
        _place(ctx, memo, f"model-{key_of(best)}", produced.get(best),
               lambda out: quantize_into(ctx, best, src, out))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    chosen = next(r["name"] for r in results if r.get("chosen"))
    ctx.log(f"int8:{b.name}: quantize: auto kept {chosen}: {int8_auto.spec_text(best)}")
    record: dict[str, Any] = {"chosen": chosen, "settings": int8_auto.settings_record(best),
                              "spec": int8_auto.spec_text(best), "cpu_class": cpu_int8(),
                              "rows": len(texts), "max_decision_flip_rate": limit,
                              "candidates": results}
    return best, record


def _place(ctx: RunContext, memo: _Memo, name: str, fresh: Path | None,
           quantize: Callable[[Path], Any]) -> None:
    """The kept model into ctx.out: quantized in this run, else the memo's copy of the last kept
    model, else quantized now; the memo then holds it (and no other model)."""
    import os

    kept = memo.dir / name
    if fresh is None and not kept.is_dir():
        fresh = ctx.out / ".candidates" / "kept"
        fresh.mkdir()
        quantize(fresh)
    if fresh is not None:
        for f in sorted(fresh.iterdir()):
            shutil.copyfile(f, ctx.out / f.name)
        tmp = memo.dir / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        memo.dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(fresh, tmp)
        for old in memo.dir.glob("model-*"):
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, kept)
    else:
        for f in sorted(kept.iterdir()):
            shutil.copyfile(f, ctx.out / f.name)
