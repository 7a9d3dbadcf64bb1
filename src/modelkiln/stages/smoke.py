"""smoke: the pre-flight check: load the ONNX bundle the way a consumer will and run it.

The consumer view is assembled from the files the ONNX bundle ships and nothing else:
`registry_model_int8.onnx`, `tokenizer/`, `thresholds.json` and `label_order.json` are copied
into a fresh directory laid out like the bundle root, and loaded from there with onnxruntime and
`AutoTokenizer` alone (no config.json, no PyTorch). A short and a long sample text go through it
as one batch, so the dynamic batch and sequence axes are exercised; the check is that the output
is (2, labels), every score is a finite probability, every label has a threshold, and thresholds
plus label order turn scores into label names. `check_view` takes any such directory, so it can
be pointed at an unpacked tarball too.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from ..artifacts import names
from ..errors import BuildError
from ..model.bundle import Bundle
from ..paths import Layout
from .base import Report, RunContext, StagePlan, params, stage_plan

NAME = "smoke"
DOC = "load the ONNX bundle as a consumer would and run a sample"
READS: tuple[str, ...] = ("tokenizer", "labels", "thresholds", "int8")
WRITES: tuple[str, ...] | None = ("smoke.json",)
OPTIONAL: tuple[str, ...] = ()  # outputs a run may leave out (stages.base.Stage)
TOOLS: tuple[str, ...] = ("onnxruntime", "tokenizers", "transformers")
PLATFORM: str | None = "cpu-int8"
CODE_VERSION = "2"  # 2: single-label decisions are the top label only (decisions.py)
SAMPLES = ("modelkiln smoke test",
           "patient procedure performed under moderate sedation with the scope in the left "
           "airway, tissue sample taken, no complication noted, follow up in clinic")


def plan(bundle: Bundle, layout: Layout) -> list[StagePlan]:
    if bundle.onnx is None:
        return []
    n = bundle.name
    return [stage_plan(
        bundle, layout, "smoke",
        doc=f"load {n}'s ONNX bundle files as a consumer would and run a sample",
        upstream=("tokenizer", "labels", "thresholds", "int8"),
        params=params(CODE_VERSION, samples=list(SAMPLES), task=bundle.source.task,
                      max_length=bundle.thresholds.max_length),
        backend="onnx")]


def assemble(ctx: RunContext, view: Path) -> None:
    """Copy the consumer-facing files from the stage outputs into `view` (bundle layout)."""
    from .int8 import OUTPUT

    int8_dir = ctx.up("int8")
    for name in sorted(p.name for p in int8_dir.iterdir()):  # the model + any external data
        shutil.copyfile(int8_dir / name, view / name)
    shutil.copytree(ctx.up("tokenizer") / names.TOKENIZER_DIR, view / names.TOKENIZER_DIR)
    shutil.copyfile(ctx.up("thresholds") / names.THRESHOLDS, view / names.THRESHOLDS)
    shutil.copyfile(ctx.up("labels") / names.LABEL_ORDER, view / names.LABEL_ORDER)
    if not (view / OUTPUT).is_file():
        raise BuildError(f"the int8 stage produced no {OUTPUT}; rebuild int8")


def check_view(view: Path, task: str, max_length: int) -> Report:
    """Run the samples through a bundle-shaped directory; raise BuildError on any wrong shape."""
    import numpy as np
    from transformers import AutoTokenizer

    from .infer import decide, ort_feed, ort_session, scores
    from .int8 import OUTPUT

    labels = tuple(json.loads((view / names.LABEL_ORDER).read_bytes()))
    cuts = json.loads((view / names.THRESHOLDS).read_bytes())
    if set(cuts) != set(labels):
        raise BuildError(f"thresholds.json labels {sorted(cuts)} differ from label_order "
                         f"{sorted(labels)}; rebuild thresholds")
    try:
        tok = AutoTokenizer.from_pretrained(str(view / names.TOKENIZER_DIR), use_fast=True)
    except Exception as exc:
        raise BuildError(f"the bundle's tokenizer does not load on its own: {exc}") from None
    session = ort_session(view / OUTPUT)
    batch = dict(tok(list(SAMPLES), padding=True, truncation=True, max_length=max_length,
                     return_tensors="np"))
    logits = session.run(["logits"], ort_feed(session, batch))[0]
    if logits.shape != (len(SAMPLES), len(labels)):
        raise BuildError(f"the int8 model gives logits of shape {list(logits.shape)} for "
                         f"{len(SAMPLES)} texts; expected {[len(SAMPLES), len(labels)]} "
                         "(one column per label in label_order.json)")
    probs = scores(logits.astype(np.float64), task)
    if not np.all(np.isfinite(probs)) or probs.min() < 0 or probs.max() > 1:
        raise BuildError("the int8 model gives scores that are not finite probabilities")
    on = decide(probs, labels, cuts, task=task)
    predicted = [[lab for lab, hit in zip(labels, row, strict=True) if hit] for row in on]
    return {"samples": len(SAMPLES), "sequence_length": int(batch["input_ids"].shape[1]),
            "output_shape": list(logits.shape), "labels": list(labels),
            "predicted": predicted,
            "files": sorted(p.relative_to(view).as_posix() for p in view.rglob("*")
                            if p.is_file())}


def run(ctx: RunContext) -> Report:
    with tempfile.TemporaryDirectory(prefix="kiln-smoke-") as tmp:
        view = Path(tmp)
        assemble(ctx, view)
        report = check_view(view, ctx.bundle.source.task, ctx.bundle.thresholds.max_length)
    (ctx.out / "smoke.json").write_text(json.dumps(report, indent=2) + "\n")
    ctx.log(f"smoke:{ctx.bundle.name}: {report['output_shape']} -> {report['predicted']}")
    return report
