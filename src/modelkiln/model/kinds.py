"""Task kinds beyond the classifiers: what `source.task` names and the typed section each needs.

A classifier spec has `labels` and `thresholds`; a `feature-extraction` (sentence embedding) spec
has an `embedding` section instead: pooling, normalization, maximum length, the calibration texts
and the gate's limits. Defaults come from the checkpoint's own sentence-transformers files when
it has them (`1_Pooling/config.json`, `modules.json`, `sentence_bert_config.json`), so a model
saved by sentence-transformers builds as it is served there without restating its settings.
Those three files are read here (small JSON, no library): sentence-transformers itself is not a
dependency, and its loader would import torch during validation.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checker import MISSING, Checker, Data

CLASSIFIERS = ("multi-label-classification", "single-label-classification")
FEATURE_EXTRACTION = "feature-extraction"
IMAGE_CLASSIFICATION = "image-classification"
TEXT_GENERATION = "text-generation"
TOKEN_CLASSIFICATION = "token-classification"
KINDS = (FEATURE_EXTRACTION, IMAGE_CLASSIFICATION, TEXT_GENERATION, TOKEN_CLASSIFICATION)  # tasks with their own stage set (stages/kinds)
# the capability a registry entry gets from its task alone (callers `--require` it), beside the
# spec's registry.capabilities
TASK_CAPABILITIES = {"multi-label-classification": "multi-label",
                     "single-label-classification": "single-label",
                     FEATURE_EXTRACTION: "embeddings", IMAGE_CLASSIFICATION: "vision",
                     TEXT_GENERATION: "chat", TOKEN_CLASSIFICATION: "entities"}


def task_capabilities(task: str, declared: tuple[str, ...]) -> tuple[str, ...]:
    """The spec's capabilities plus the one the task implies (first, when not declared)."""
    implied = TASK_CAPABILITIES.get(task)
    return declared if implied is None or implied in declared else (implied, *declared)


@dataclass(frozen=True)
class EmbeddingParity:
    min_cosine: float  # int8 vs PyTorch, every row
    min_fp32_cosine: float  # fp32 ONNX vs PyTorch, every row
    top_k: int
    min_topk_agreement: float
    samples: int | None


@dataclass(frozen=True)
class Embedding:
    """The `embedding:` section, with the checkpoint's sentence-transformers defaults applied."""

    pooling: str  # mean | cls
    normalize: bool
    max_length: int
    calibration: Path
    parity: EmbeddingParity
    dimension: int  # hidden size from config.json (0 when it could not be read)


@dataclass(frozen=True)
class Generation:
    """The `generation:` section of a text-generation (decoder LLM) spec."""

    calibration: Path  # JSONL rows {"prompt": ...}
    steps: int  # greedy steps compared per prompt
    min_agreement: float  # int8: share of greedy steps that pick PyTorch's token
    max_first_logit_diff: float  # int8: largest |logit difference| on the first step
    max_length: int
    served_model_id: str | None  # what a vLLM server answers to
    launch_args: tuple[str, ...]  # vLLM launch arguments recorded in the registry entry


def generation(c: Checker, data: Data) -> Generation | None:
    g = data.get("generation")
    if g is None:
        return None
    if data["source"]["task"] != TEXT_GENERATION:
        c.fail(("generation",), f"source.task {data['source']['task']} has no generation section",
               "the generation section is for source.task: text-generation", at_key=True)
        return None
    for key in ("labels", "thresholds"):
        if key in data:
            c.fail((key,), f"source.task {TEXT_GENERATION} has no {key}",
                   f"remove the {key} section (classifiers only)", at_key=True)
    # backends.tensorrt is accepted: `kiln plan` shows its engine task skipped with the reason
    # (stages/kinds/generation.TRT_SKIP), as a host without a GPU shows a classifier's
    p, s = g.get("parity", {}), g.get("serving", {})
    cal = c.path(("generation", "calibration"), g["calibration"], "file")
    return Generation(cal or Path(), int(g.get("steps", 8)), float(p.get("min_agreement", 0.95)),
                      float(p.get("max_first_logit_diff", 1.0)), int(g.get("max_length", 128)),
                      s.get("served_model_id"), tuple(s.get("launch_args", ())))


@dataclass(frozen=True)
class Entities:
    """The `entities:` section of a token-classification (NER) spec."""

    calibration: Path  # JSONL rows {"text": ...}
    aggregation: str  # simple | first | average | max (artifacts/entities.py: the HF pipeline's)
    max_length: int
    min_agreement: float  # int8: the worst label's entity agreement (span + label) with PyTorch


def entities(c: Checker, data: Data, names: tuple[str, ...]) -> Entities | None:
    """The `entities:` section; the label order must be a BIO scheme (O, B-X, I-X, ...)."""
    e = data.get("entities")
    if e is None:
        return None
    if data["source"]["task"] != TOKEN_CLASSIFICATION:
        c.fail(("entities",), f"source.task {data['source']['task']} has no entities section",
               "the entities section is for source.task: token-classification", at_key=True)
        return None
    if "thresholds" in data:
        c.fail(("thresholds",), f"source.task {TOKEN_CLASSIFICATION} has no thresholds",
               "remove the thresholds section (entities are the argmax tag per token)", at_key=True)
    bad = [n for n in names if n != "O" and not (n[:2] in ("B-", "I-") and len(n) > 2)]
    missing = sorted({f"B-{n[2:]}" for n in names if n.startswith("I-")} - set(names))
    if names and ("O" not in names or bad or missing):
        c.fail(("labels", "order"), f"not a BIO label order (odd: {bad or '-'}, I- without B-: "
               f"{missing or '-'}, O present: {'O' in names})",
               'list "O" and a B-X, I-X pair per entity type, in the model\'s output order')
    cal = c.path(("entities", "calibration"), e["calibration"], "file")
    return Entities(cal or Path(), str(e.get("aggregation", "simple")),
                    int(e.get("max_length", 128)),
                    float(e.get("parity", {}).get("min_agreement", 0.9)))


def is_classifier(task: str) -> bool:
    return task in CLASSIFIERS


def check(c: Checker, data: Data) -> None:
    """What a task kind cannot take yet, as spec problems: static quantization (it calibrates on
    texts through the classifiers' stages; `quantize: auto` is the plain dynamic default for a
    kind, stages/int8.py), and an image classifier's f1-optimal thresholds (they score texts)."""
    task = data["source"]["task"]
    if task not in KINDS:
        return
    onnx = data["backends"].get("onnx")
    q = onnx.get("quantize", "auto") if isinstance(onnx, dict) else None
    if isinstance(q, dict) and q.get("mode", "dynamic") == "static":  # auto is dynamic here
        c.fail(("backends", "onnx", "quantize", "mode"), f"source.task {task} takes dynamic "
               "quantization only (static calibrates on the classifiers' texts)",
               "set backends.onnx.quantize: {mode: dynamic, weight_type: int8, per_channel: true}")
    thresholds = data.get("thresholds")
    if task == IMAGE_CLASSIFICATION and isinstance(thresholds, dict):
        if thresholds.get("strategy") != "fixed":
            c.fail(("thresholds", "strategy"), f"source.task {task} takes fixed thresholds only",
                   "set thresholds.strategy: fixed (default and values)")
        if "calibration" not in thresholds and onnx is not None:
            c.fail(("thresholds",), "the ONNX gates need calibration images",
                   'set thresholds.calibration: JSONL rows {"image": "a.png", "labels": [...]}')


def _st_defaults(c: Checker, ckpt: Path | None) -> dict[str, Any]:
    """pooling / normalize / max_length as the checkpoint's sentence-transformers files say."""
    found: dict[str, Any] = {}
    if ckpt is None:
        return found
    pool = c.json_file(("source", "checkpoint"), ckpt / "1_Pooling" / "config.json")
    if isinstance(pool, dict):
        if pool.get("pooling_mode_cls_token"):
            found["pooling"] = "cls"
        elif pool.get("pooling_mode_mean_tokens"):
            found["pooling"] = "mean"
    modules = c.json_file(("source", "checkpoint"), ckpt / "modules.json")
    if isinstance(modules, list):
        found["normalize"] = any(isinstance(m, dict) and str(m.get("type", "")).endswith("Normalize")
                                 for m in modules)
    st = c.json_file(("source", "checkpoint"), ckpt / "sentence_bert_config.json")
    if isinstance(st, dict) and isinstance(st.get("max_seq_length"), int):
        found["max_length"] = st["max_seq_length"]
    return found


def _dimension(c: Checker, ckpt: Path | None) -> int:
    config = c.json_file(("source", "checkpoint"), ckpt / "config.json") if ckpt else MISSING
    size = config.get("hidden_size", config.get("d_model")) if isinstance(config, dict) else None
    return size if isinstance(size, int) else 0


def embedding(c: Checker, data: Data, ckpt: Path | None) -> Embedding | None:
    """The `embedding:` section of a feature-extraction spec (the schema requires it there)."""
    e = data.get("embedding")
    if e is None:
        return None
    if data["source"]["task"] != FEATURE_EXTRACTION:
        c.fail(("embedding",), f"source.task {data['source']['task']} has no embedding section",
               "the embedding section is for source.task: feature-extraction", at_key=True)
        return None
    for key in ("labels", "thresholds"):  # what only a classifier has: say so, not "ignored"
        if key in data:
            c.fail((key,), f"source.task {data['source']['task']} has no {key}",
                   f"remove the {key} section: labels and thresholds are for the classifier "
                   "tasks (multi-label-classification, single-label-classification)", at_key=True)
    st = _st_defaults(c, ckpt)
    cal = c.path(("embedding", "calibration"), e["calibration"], "file")
    p = e.get("parity", {})
    parity = EmbeddingParity(float(p.get("min_cosine", 0.99)), float(p.get("min_fp32_cosine", 0.9999)),
                             int(p.get("top_k", 5)), float(p.get("min_topk_agreement", 0.9)),
                             p.get("samples"))
    return Embedding(str(e.get("pooling", st.get("pooling", "mean"))),
                     bool(e.get("normalize", st.get("normalize", False))),
                     int(e.get("max_length", st.get("max_length", 128))), cal or Path(), parity,
                     _dimension(c, ckpt))
