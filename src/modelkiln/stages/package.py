"""package: stage outputs -> `dist/<name>/<version>/<backend>/{bundle.tar.gz, manifest.json}`.

The bundle layout that serving code reads (config.json, model.safetensors, tokenizer/, thresholds.json,
label_order.json, registry_label_fields.json, manifest.json; plus registry_model_int8.onnx for the
ONNX bundle). Files are streamed into the tarball straight from each stage's output directory and
their digests come from the upstream stamps, so packaging reads each byte once and hashes only
the tarball. Only this stage and publishing see the resolved version.

The manifest's `inputs` are the source files the packed stages read, with the digests those stages
recorded. Package tracks the same files as its own inputs, so an edit that reruns an upstream stage
but leaves every packed byte the same (early cutoff: calibration rows that give the same thresholds)
still repackages and refreshes the record: a shipped manifest never names a digest that is stale.
Its `parity` holds the parity gates' figures, with the other checks' reports (smoke test, TensorRT
engine and gates) beside them under their stage names.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from string import Template
from typing import Any, cast

from ..artifacts import manifest as mf
from ..artifacts import names
from ..artifacts.digest import sha256_bytes, sha256_file
from ..artifacts.tarball import write_tarball
from ..backends import BUILTIN_BACKENDS, Packs
from ..backends import backend as backend_of
from ..model.bundle import Bundle
from ..model.files import BadFile, read_json
from ..model.version import resolve
from ..paths import Layout
from ..resources import resource_bytes
from . import engines, int8, int8_auto, kinds, labels, thresholds, tokenizer, weights
from .base import Report, RunContext, StagePlan, params, tool_versions
from .card import chart_svg, front_matter, metrics_table, model_file, parity_table, prose

NAME = "package"
DOC = "pack bundle.tar.gz and manifest.json per backend"
READS: tuple[str, ...] = ("weights", "tokenizer", "labels", "thresholds", "onnx", "int8", "parity",
                          "smoke", "engines", "trtparity")
WRITES: tuple[str, ...] | None = (names.ARCHIVE, names.MANIFEST)
OPTIONAL: tuple[str, ...] = ()  # outputs a run may leave out (stages.base.Stage)
TOOLS: tuple[str, ...] = ()  # per backend: tools_for(plan)
PLATFORM: str | None = None
CODE_VERSION = "8"  # 4: the manifest records the serving signature; 5: weights stored by a
# spread sample (artifacts.tarball); 6: the card lists the model's real inputs; 7: the card shows
# per-label metrics, the parity table, the spec's card section and a chart (stages/card.py);
# 8: a task kind's card opens with the front matter too
CARD = names.MODEL_CARD
# What each backend packs, reports and records comes from the backend itself (modelkiln.backends):
# CONTENTS / REPORTS / GRAPH are the built-ins' answers, kept for readers of this module.
CONTENTS: dict[str, Packs] = {n: b.PACKS for n, b in BUILTIN_BACKENDS.items()}
REPORTS: dict[str, tuple[str, ...]] = {n: b.REPORTS for n, b in BUILTIN_BACKENDS.items()}
GRAPH: dict[str, str] = {n: b.GRAPH for n, b in BUILTIN_BACKENDS.items() if b.GRAPH}
# transformers' tokenizers that produce no token_type_ids (their class's model_input_names), for a
# tokenizer_config.json that names its class but not model_input_names; any other class gets
# transformers' default (input_ids, token_type_ids, attention_mask)
_NO_TOKEN_TYPES = frozenset({"MPNetTokenizer", "RobertaTokenizer", "XLMRobertaTokenizer",
                             "DistilBertTokenizer", "CamembertTokenizer", "LongformerTokenizer",
                             "BartTokenizer", "GPT2Tokenizer", "T5Tokenizer"})
_DEFAULT_INPUTS = ("input_ids", "token_type_ids", "attention_mask")
BACKEND_TOOLS: dict[str, tuple[str, ...]] = {n: b.TOOLS for n, b in BUILTIN_BACKENDS.items()}


_PACKED = {"weights": weights, "tokenizer": tokenizer, "labels": labels, "thresholds": thresholds,
           "int8": int8, "engines": engines}  # the stage modules whose outputs CONTENTS packs
SPEC_KEYS = ("apiVersion", "kind", "name", "version", "description", "source", "labels",
             "thresholds", "metadata", "card")


def spec_digest(bundle: Bundle, backend: str) -> str:
    """Digest of the part of the spec one backend's bundle is built from (canonical JSON, so
    comments and key order do not count). Other backends, publish targets and registry roles are
    left out: disabling ONNX or moving the S3 prefix does not repackage the PyTorch bundle."""
    sections = dict(bundle.sections)
    relevant = {k: sections.get(k, "null") for k in SPEC_KEYS}
    relevant["backend"] = json.dumps(json.loads(sections["backends"]).get(backend))
    return sha256_bytes(json.dumps(relevant, sort_keys=True, separators=(",", ":")).encode())


def _checks(reports: dict[str, Report]) -> Report:
    """The manifest's `parity`: the gate figures themselves, other checks under their stage name."""
    flat: Report = dict(reports.get("parity") or {})
    flat.update({stage: report for stage, report in reports.items() if stage != "parity"})
    return flat


def _how(metric: dict[str, Any]) -> str:
    """The card's "how chosen" cell: the source, and why when the default was kept."""
    why = metric.get("why")
    return f"{metric.get('source', '')}: {why}" if why else str(metric.get("source", ""))


def tokenizer_inputs(tokenizer_dir: Path) -> list[str]:
    """What the tokenizer feeds the model, from its tokenizer_config.json (no transformers
    import): `model_input_names` when saved there, else its class's, else the default."""
    try:
        config = read_json(tokenizer_dir / names.TOKENIZER_CONFIG,
                           origin=str(tokenizer_dir / names.TOKENIZER_CONFIG))
    except BadFile:
        config = None
    if not isinstance(config, dict):
        return list(_DEFAULT_INPUTS)
    saved = config.get("model_input_names")
    if isinstance(saved, list) and saved and all(isinstance(x, str) for x in saved):
        return list(saved)
    klass = config.get("tokenizer_class")
    if isinstance(klass, str) and klass.removesuffix("Fast") in _NO_TOKEN_TYPES:
        return ["input_ids", "attention_mask"]
    return list(_DEFAULT_INPUTS)


def card_inputs(ctx: RunContext, backend: str) -> str:
    """The card's input sentence: the exported graph's inputs with dtype and shape (recorded by
    the onnx stage), or, for a PyTorch bundle, the tokenizer's model_input_names."""
    source = backend_of(backend).GRAPH
    graph = ctx.up_stamp(source)["report"].get("graph_inputs") if source else None
    if graph:
        rows = "\n".join(f"| `{i['name']}` | {i['dtype']} | "
                         f"{' × '.join(str(d) for d in i['shape']) or 'scalar'} |" for i in graph)
        return ("the exported graph's inputs:\n\n| input | dtype | shape |\n|---|---|---|\n"
                f"{rows}\n")
    found = tokenizer_inputs(ctx.up("tokenizer") / names.TOKENIZER_DIR)
    return (", ".join(f"`{n}`" for n in found) + " (the tokenizer's model_input_names; "
            "int64, batch × sequence).")


def model_card(ctx: RunContext, backend: str, version: str, reports: dict[str, Report],
               tools: dict[str, str]) -> str:
    """The bundle's model card from templates/model_card.md: inputs, outputs, labels, thresholds,
    and the checks it passed. Deterministic: no dates, only what the build recorded."""
    b = ctx.bundle
    labels_dir, thresholds_dir = ctx.up("labels"), ctx.up("thresholds")
    order = json.loads((labels_dir / names.LABEL_ORDER).read_bytes())
    fields = json.loads((labels_dir / names.LABEL_FIELDS).read_bytes())
    cuts = json.loads((thresholds_dir / names.THRESHOLDS).read_bytes())
    metrics = json.loads((thresholds_dir / names.THRESHOLD_METRICS).read_bytes())
    checks = ["- weights load into their architecture with no missing or extra keys",
              "- the tokenizer loads as a fast tokenizer"]
    parity = reports.get("parity") or {}
    if parity:
        fp32, int8, limits = parity["fp32"], parity["int8"], parity["limits"]
        checks.append(f"- fp32 ONNX vs PyTorch on {parity['rows']} calibration texts: max |logit "
                      f"diff| {fp32['max_abs_logit_diff']:.3g} (limit {limits['atol']:g})")
        checks.append(f"- int8 vs PyTorch: decision flip rate {int8['decision_flip_rate']:.2%} "
                      f"(limit {limits['max_decision_flip_rate']:.2%}), top-label agreement "
                      f"{int8['top_label_agreement']:.2%}")
        if parity.get("quantize"):  # quantize: auto: what it kept and every candidate's figures
            checks.extend(int8_auto.card_lines(parity["quantize"]))
    for sm, gate in (reports.get("trtparity") or {}).get("engines", {}).items():
        checks.append(f"- TensorRT engine {sm} vs fp32 ONNX on {gate['rows']} calibration texts: "
                      f"max |logit diff| {gate['max_abs_logit_diff']:.3g}, decision flip rate "
                      f"{gate['decision_flip_rate']:.2%} (limit "
                      f"{gate['limits']['max_decision_flip_rate']:.2%}); used only on a GPU "
                      "whose facts match its engine.json, else the int8 ONNX model serves")
    if reports.get("smoke"):
        checks.append("- smoke test: the shipped int8 model, tokenizer and thresholds load alone "
                      "and label a sample")
    from ..artifacts.decisions import DECISION_RULE, SINGLE_LABEL

    multi = b.source.task == "multi-label-classification"
    template = Template(resource_bytes("templates", "model_card.md").decode())
    return template.substitute(
        front_matter=front_matter(b, backend), chart=names.CARD_CHART,
        intended_use=prose(b.card.intended_use, "Not stated in the spec (`card.intended_use`)."),
        limitations=prose(b.card.limitations, "Not stated in the spec (`card.limitations`)."),
        labels=metrics_table(order, cuts, metrics, fields), parity=parity_table(parity, order),
        name=b.name, version=version, backend=backend, description=b.description or "",
        task=b.source.task, max_length=b.thresholds.max_length,
        model_file=_model_file(ctx, backend),
        strategy=b.thresholds.strategy, default=b.thresholds.default,
        metadata=", ".join(f"{k}: {v}" for k, v in b.metadata) or "-",
        score="sigmoid of each logit" if multi else "softmax over the labels",
        decision=DECISION_RULE.get(b.source.task, DECISION_RULE[SINGLE_LABEL]),
        inputs=card_inputs(ctx, backend), checks="\n".join(checks),
        tools=", ".join(f"{k} {v}" for k, v in sorted(tools.items())))


def _model_file(ctx: RunContext, backend: str) -> str:
    """The card's model file: the backend's, or a sharded checkpoint's index and its shards (the
    weights stage keeps a sharded safetensors checkpoint sharded)."""
    name = model_file(backend)
    if name == names.WEIGHTS and "weights" in ctx.upstream:
        outputs = ctx.up_stamp("weights")["outputs"]
        if names.WEIGHTS_INDEX in outputs:
            count = sum(1 for rel in outputs if rel.endswith(".safetensors"))
            return f"{names.WEIGHTS_INDEX} ({count} safetensors shards)"
    return name


def _source_inputs(bundle: Bundle, layout: Layout, backend: str,
                   planned: Mapping[str, Sequence[StagePlan]]) -> tuple[Path, ...]:
    """Every source file the packed stages read: what the manifest's `inputs` record."""
    found: set[Path] = set()
    for stage, _wanted in _contents(bundle, backend):
        if stage in planned:
            plans = planned[stage]
        else:  # package planned alone: the built-in stages it packs (a plug-in's has no inputs)
            plans = _PACKED[stage].plan(bundle, layout) if stage in _PACKED else []
        for p in plans:
            found.update(p.inputs)
    return tuple(sorted(found))


@cache
def _card_digest() -> str:
    return sha256_bytes(resource_bytes("templates", "model_card.md"))


def tools_for(plan: StagePlan) -> tuple[str, ...]:
    """The distributions whose versions shape this backend's package (also in its manifest)."""
    return tuple(backend_of(plan.backend).TOOLS) if plan.backend else ()


def plan(bundle: Bundle, layout: Layout,
         planned: Mapping[str, Sequence[StagePlan]] | None = None) -> list[StagePlan]:
    """One task per enabled backend. `planned` holds the plans of stages already planned for
    this bundle (the graph plans every stage once), so their inputs are not listed again."""
    version = resolve(bundle.version, bundle.root)
    plans = []
    for backend in bundle.backends:
        stages = [s for s, _ in _contents(bundle, backend)] + list(_reports(bundle, backend)) + \
            ([g] if (g := backend_of(backend).GRAPH) else [])
        plans.append(StagePlan(
            task=f"package:{bundle.name}-{backend}", stage="package", bundle=bundle.name,
            doc=f"pack {bundle.name} {version} ({backend}) into bundle.tar.gz + manifest.json",
            out_dir=layout.dist_dir(bundle.name, version, backend),
            stamp=layout.stamp(bundle.name, f"package-{backend}"),
            inputs=_source_inputs(bundle, layout, backend, planned or {}),
            upstream=tuple(f"{s}:{bundle.name}" for s in stages),
            params=params(CODE_VERSION, name=bundle.name, version=version, backend=backend,
                          description=bundle.description, metadata=dict(bundle.metadata),
                          spec=spec_digest(bundle, backend),
                          card=_card_digest()),
            backend=backend, extra=(("version", version),),
        ))
    return plans


def _contents(bundle: Bundle, backend: str) -> tuple[tuple[str, tuple[str, ...] | None], ...]:
    """What one backend's bundle packs: CONTENTS, or the task kind's own list (stages/kinds)."""
    kind = kinds.kind_of(bundle)
    return kind.contents[backend] if kind else backend_of(backend).PACKS


def _reports(bundle: Bundle, backend: str) -> tuple[str, ...]:
    kind = kinds.kind_of(bundle)
    return kind.reports[backend] if kind else backend_of(backend).REPORTS


def serving_signature(ctx: RunContext) -> mf.Signature:
    """The input/output schema `predict` serves (the same rule as the gates: decisions.py)."""
    from ..artifacts.decisions import DECISION_RULE, SCORE_RULE, SINGLE_LABEL

    task = ctx.bundle.source.task
    order = json.loads((ctx.up("labels") / names.LABEL_ORDER).read_bytes())
    return {"task": task, "input": "text", "max_length": ctx.bundle.thresholds.max_length,
            "labels": [str(x) for x in order], "score": SCORE_RULE.get(task, "softmax"),
            "decision": f"{DECISION_RULE.get(task, DECISION_RULE[SINGLE_LABEL])} "
                        f"({names.THRESHOLDS})",
            "output": {"labels": "the labels that are on, in label order",
                       "scores": "label -> score in [0, 1]"}}


def run(ctx: RunContext) -> Report:
    backend = ctx.plan.backend
    assert backend is not None, "package plans one task per backend"
    members: list[tuple[str, Path]] = []
    files: list[mf.FileEntry] = []
    inputs: dict[str, str] = {}
    for stage, wanted in _contents(ctx.bundle, backend):
        stamp = ctx.up_stamp(stage)
        for rel, digest in sorted(stamp["outputs"].items()):
            if wanted is None or any(rel == w or (w.endswith("/") and rel.startswith(w))
                                     for w in wanted):
                path = ctx.up(stage) / rel
                members.append((rel, path))
                files.append({"path": rel, "size": path.stat().st_size, "sha256": digest})
        inputs.update({k: v for k, v in stamp["inputs"].items() if not k.startswith("@")})
    reports = {stage: ctx.up_stamp(stage)["report"] for stage in _reports(ctx.bundle, backend)}
    version = ctx.plan.get("version") or ctx.bundle.version
    tools = tool_versions(*backend_of(backend).TOOLS)
    card = ctx.out / ".model_card.md"
    kind = kinds.kind_of(ctx.bundle)
    text = kind.card(ctx, backend, version, reports, tools) if kind \
        else model_card(ctx, backend, version, reports, tools)
    # every card opens with the Hugging Face front matter, a task kind's own card included
    card.write_text(text if text.startswith("---\n") else f"{front_matter(ctx.bundle, backend)}\n{text}")
    members.append((CARD, card))
    files.append({"path": CARD, "size": card.stat().st_size, "sha256": sha256_file(card)})
    chart = ctx.out / ".model_card_chart.svg"
    if names.CARD_CHART in card.read_text():  # the card links its chart (a task kind's may not)
        chart.write_text(chart_svg(ctx))
        members.append((names.CARD_CHART, chart))
        files.append({"path": names.CARD_CHART, "size": chart.stat().st_size,
                      "sha256": sha256_file(chart)})
    files.sort(key=lambda f: f["path"])
    manifest = mf.build(
        name=ctx.bundle.name, version=version, backend=backend, files=files, inputs=inputs,
        spec_digest=spec_digest(ctx.bundle, backend), tools=tools,
        parity=_checks(reports), metadata=dict(ctx.bundle.metadata),
        signature=cast(mf.Signature, kind.signature(ctx)) if kind else serving_signature(ctx))
    inner = ctx.out / ".bundle-manifest.json"
    inner.write_bytes(mf.dumps(manifest))
    archive = ctx.out / mf.ARCHIVE
    size, digest = write_tarball(archive, [*members, (mf.MANIFEST, inner)])
    os.unlink(inner)
    os.unlink(card)
    if chart.exists():
        os.unlink(chart)
    ctx.cache.remember(archive, digest)
    published = mf.with_archive(manifest, size, digest)
    (ctx.out / mf.MANIFEST).write_bytes(mf.dumps(published))
    ctx.log(f"package:{ctx.bundle.name}-{backend}: {len(files)} files -> {ctx.plan.out_dir}")
    return {"archive_sha256": published["archive"]["sha256"],
            "aggregate_sha256": manifest["aggregate_sha256"], "version": version}
