"""trt: the ONNX model -> a TensorRT engine for this host's GPU, with its key and parity logits.

Output (`build/<name>/trt/`):

    engines/sm<cc>/model.plan    the serialized engine (shipped in the tensorrt bundle)
    engines/sm<cc>/engine.json   its key (artifacts.engine_key): what it was built for
    parity/sm<cc>/engine.npy     the engine's logits on the parity rows
    parity/sm<cc>/onnx.npy       the fp32 ONNX model's logits on the same rows (onnxruntime, CPU)

The gate itself (`trtparity`) compares the two at the shipped thresholds; thresholds are not an
input here, so editing them never rebuilds an engine. Changing the ONNX model, the calibration
texts, or any engine setting does. `when` is not a parameter either: it decides *whether* the
task runs on a host (`kiln plan` shows "skip" with the reason), not what it builds.

The source model is the fp32 export (precision fp32/fp16) or the int8 stage's model (precision
int8, which must then be static Q/DQ); `onnx_lint` checks it before the builder sees it. The
engine's bytes differ between rebuilds, so its cache platform class (`platform_class`) names the
architecture, TensorRT version and CUDA flavour it was built with.

The encoder task kinds (embedding, NER, vision) build through this same stage: their profile
shapes, parity rows and reference output come from stages/trt_kinds (their `parity/sm<cc>/` may
also hold mask.npy, the real tokens of a tagger's rows).
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from ..artifacts import engine_key as ek
from ..artifacts import names
from ..artifacts.digest import aggregate, sha256_bytes, sha256_file
from ..errors import BuildError
from ..model.bundle import Bundle, TensorRT
from ..paths import Layout
from . import kinds, onnx_lint, trt_builder, trt_kinds
from .base import Report, RunContext, StagePlan, params, stage_plan

NAME = "trt"
DOC = "build a TensorRT engine for this host's GPU from the ONNX model (skipped without one)"
READS: tuple[str, ...] = ("onnx", "int8", "tokenizer", "image_processor")  # the latter: vision
WRITES: tuple[str, ...] | None = ("engines/sm*/*", "parity/sm*/*")
OPTIONAL: tuple[str, ...] = ()  # outputs a run may leave out (stages.base.Stage)
PLATFORM: str | None = None  # its own class: platform_class(plan)
CODE_VERSION = "1"
TOOLS: tuple[str, ...] = ("onnx", "onnxruntime", "numpy", "tokenizers", "transformers")
PARITY_DIR = "parity"
TIMING_DIR = "trt-timing"  # under .kiln/: timing caches, one per platform class and family


def host_facts() -> ek.HostFacts:
    """This host's GPU and TensorRT facts (tests replace this function with fake facts)."""
    return ek.probe_host()


def select_builder(host: ek.HostFacts) -> trt_builder.EngineBuilder:
    """The engine builder for this host (tests replace it with trt_builder.FakeBuilder)."""
    return trt_builder.select(host)


def settings(t: TensorRT) -> dict[str, Any]:
    """The spec values an engine depends on (`when` and the parity limits are not among them)."""
    return {"precision": t.precision, "profiles": profiles(t), "workspace_mb": t.workspace_mb,
            "optimization_level": t.optimization_level,
            "hardware_compatibility": t.hardware_compatibility,
            "version_compatible": t.version_compatible, "strict_device_name": t.strict_device_name}


def profiles(t: TensorRT) -> ek.Profiles:
    return {"batch": dict(zip(("min", "opt", "max"), t.batch, strict=True)),
            "sequence": dict(zip(("min", "opt", "max"), t.sequence, strict=True))}


def skip_reason(t: TensorRT, host: ek.HostFacts) -> str | None:
    """Why `trt` does not run on this host (`when: gpu-available` without a GPU or TensorRT)."""
    why = host.unusable()
    if why and t.when == "gpu-available":
        return f"{why}; backends.tensorrt.when is gpu-available"
    return None


def plan(bundle: Bundle, layout: Layout) -> list[StagePlan]:
    t = bundle.tensorrt
    if t is None:
        return []
    source = "int8" if t.precision == "int8" else "onnx"
    cal = bundle.thresholds.calibration
    host = host_facts()
    # an encoder kind's profile shapes come from its own inputs and max length (trt_kinds)
    shapes = trt_kinds.input_shapes(bundle, t)
    kind = {} if shapes is None else {"inputs": shapes, "task": bundle.source.task}
    p = stage_plan(
        bundle, layout, "trt",
        doc=f"build {bundle.name}'s TensorRT engine ({t.precision}) for this host's GPU",
        inputs=trt_kinds.calibration_inputs(bundle, t) if shapes else (cal,) if cal else (),
        upstream=tuple(dict.fromkeys((source, "onnx", trt_kinds.reads(bundle)))),
        # the platform is a parameter: an engine built for another GPU is stale on this one
        params=params(CODE_VERSION, tensorrt=settings(t), samples=t.parity.samples,
                      max_length=trt_kinds.max_length(bundle) if shapes
                      else bundle.thresholds.max_length,
                      platform=ek.platform_class(host, t.strict_device_name), **kind),
        backend="tensorrt")
    extra: list[tuple[str, str]] = [("when", t.when), ("source", source),
                                    ("strict", "1" if t.strict_device_name else "")]
    why = skip_reason(t, host)
    if why:
        extra.append(("skip", why))
    return [dataclasses.replace(p, extra=tuple(extra))]


def platform_class(plan: StagePlan) -> str:
    """The action cache's platform class of this task: engines differ by GPU and TensorRT."""
    return ek.platform_class(host_facts(), strict=plan.get("strict") == "1")


def onnx_files(model: Path, external: list[str]) -> dict[str, str]:
    """The model file and its external data files -> sha256 (all go into the engine key)."""
    files = {model.name: sha256_file(model)}
    files.update({rel: sha256_file(model.parent / rel) for rel in external})
    return dict(sorted(files.items()))


def make_key(t: TensorRT, host: ek.HostFacts, version: str, files: dict[str, str],
             mode: str, shapes: trt_kinds.Shapes | None = None) -> ek.EngineKey:
    """The engine key of a build on `host` with TensorRT `version` (pure). An encoder kind's
    per-input shapes go in with the builder settings (a classifier's key is as it was)."""
    builder: dict[str, Any] = {"workspace_mb": t.workspace_mb,
                               "optimization_level": t.optimization_level, "precision_mode": mode}
    if shapes is not None:
        builder["input_shapes"] = shapes
    return {"schema": ek.SCHEMA, "onnx_sha256": aggregate(files.items()), "onnx_files": files,
            "profiles": profiles(t), "precision": t.precision, "builder": builder,
            "plugins": {}, "code": CODE_VERSION, "tensorrt": version,
            "cuda": host.cuda or "cuda-unknown", "compute_capability": host.gpu_cc or "",
            "device_name": host.gpu_name if t.strict_device_name else None,
            "hardware_compatibility": t.hardware_compatibility,
            "version_compatible": t.version_compatible, "os_arch": host.os_arch}


def _source(ctx: RunContext) -> Path:
    from .int8 import OUTPUT
    from .onnx import MODEL

    return ctx.up("int8") / OUTPUT if ctx.plan.get("source") == "int8" else ctx.up("onnx") / MODEL


def _parity_rows(ctx: RunContext, t: TensorRT) -> Any:
    """The calibration texts the gate compares on, tokenized within the profile's sequence range."""
    from .infer import encode, read_calibration

    labels = ctx.bundle.labels.names
    texts, _ = read_calibration(ctx.bundle.thresholds.calibration, labels, limit=t.parity.samples)
    length = min(ctx.bundle.thresholds.max_length, t.sequence[2])
    return encode(ctx.up("tokenizer") / names.TOKENIZER_DIR, texts, length)


def _engine_logits(builder: trt_builder.EngineBuilder, plan_bytes: bytes, batch: Any,
                   max_batch: int) -> Any:
    import numpy as np

    n = len(next(iter(batch.values())))
    parts = [builder.infer(plan_bytes, {k: v[s:s + max_batch] for k, v in batch.items()})
             for s in range(0, n, max_batch)]
    return np.concatenate(parts).astype(np.float32)


def _lint(ctx: RunContext, src: Path, t: TensorRT, version: str,
          shapes: trt_kinds.Shapes | None = None) -> onnx_lint.LintReport:
    ranges = trt_kinds.lint_profiles(shapes) if shapes else profiles(t)
    report = onnx_lint.lint(src, t.precision, trt_builder.major(version), ranges)
    if report.problems:
        raise BuildError(f"{src.name} cannot feed TensorRT {version}: "
                         + " | ".join(report.problems))
    return report


def run(ctx: RunContext) -> Report:
    import numpy as np

    from .infer import ort_logits
    from .onnx import MODEL

    t = ctx.bundle.tensorrt
    if t is None:
        raise BuildError(f"{ctx.plan.task}: backends.tensorrt is not enabled; run `kiln plan` again")
    host = host_facts()
    why = host.unusable()
    if why:
        raise BuildError(f"backends.tensorrt.when is {t.when} and this host cannot build an "
                         f"engine ({why}); build on a machine with an NVIDIA GPU and TensorRT, "
                         "or set when: gpu-available to skip it here")
    builder = select_builder(host)
    version = builder.version()
    src = _source(ctx)
    shapes = trt_kinds.input_shapes(ctx.bundle, t)
    lint = _lint(ctx, src, t, version, shapes)
    sm = host.sm or "sm0"
    key_base = make_key(t, host, version, onnx_files(src, lint.external_data),
                        trt_builder.precision_mode(version), shapes)
    timing = ctx.layout.state / TIMING_DIR / \
        f"{ek.platform_class(host, t.strict_device_name)}-{ek.family(key_base)[:16]}.cache"
    request = trt_builder.BuildRequest(
        onnx=src, precision=t.precision, profiles=profiles(t), workspace_mb=t.workspace_mb,
        optimization_level=t.optimization_level, hardware_compatibility=t.hardware_compatibility,
        version_compatible=t.version_compatible, timing_cache=timing, shapes=shapes)
    ctx.log(f"trt:{ctx.bundle.name}: building a {t.precision} engine for {sm} with "
            f"{builder.name} TensorRT {version}")
    built = builder.build(request)
    key = make_key(t, host, version, onnx_files(src, lint.external_data), built.precision_mode,
                   shapes)
    rel = f"{names.ENGINES_DIR}/{sm}/{names.ENGINE_PLAN}"
    (ctx.out / rel).parent.mkdir(parents=True)
    (ctx.out / rel).write_bytes(built.plan)
    side = ek.sidecar(key, rel, len(built.plan), sha256_bytes(built.plan))
    (ctx.out / names.ENGINES_DIR / sm / names.ENGINE_SIDECAR).write_bytes(ek.dumps(side))
    kind = kinds.kind_of(ctx.bundle)
    batch = trt_kinds.parity_rows(ctx, t) if shapes else _parity_rows(ctx, t)
    engine = _engine_logits(builder, built.plan, batch, t.batch[2])
    reference = trt_kinds.onnx_outputs(ctx.up("onnx") / MODEL, batch, kind.output) \
        if shapes and kind else ort_logits(ctx.up("onnx") / MODEL, batch)
    out = ctx.out / PARITY_DIR / sm
    out.mkdir(parents=True)
    if shapes and "attention_mask" in batch:  # the real tokens, for a per-token gate
        np.save(out / trt_kinds.MASK, np.asarray(batch["attention_mask"], dtype=bool))
    np.save(out / "engine.npy", engine)
    np.save(out / "onnx.npy", reference)
    ctx.log(f"trt:{ctx.bundle.name}: {len(built.plan):,} byte engine, key {side['key_sha256'][:12]}")
    return {"engines": {sm: {**describe(side), "plan_size": len(built.plan),
                             "family_sha256": side["family_sha256"]}},
            "builder": builder.name, "precision_mode": built.precision_mode,
            "lint": onnx_lint.summary(lint), "parity_rows": len(engine)}


def engine_sets(directory: Path) -> list[ek.Sidecar]:
    """Every engine sidecar under `directory`/engines, checked."""
    root = directory / names.ENGINES_DIR
    if not root.is_dir():
        return []
    return [ek.load(p) for p in sorted(root.glob(f"*/{names.ENGINE_SIDECAR}"))]


def merge(sources: list[Path], dest: Path) -> list[ek.Sidecar]:
    """Copy the engines of several trt outputs (one per runner/architecture) into `dest`.

    All must be of one family (same model, profiles, settings); one engine per architecture.
    The same engine met twice is kept once; two different engines for one architecture are
    refused, since a bundle cannot say which of them a host should use."""
    chosen: dict[str, tuple[ek.Sidecar, Path]] = {}
    families: set[str] = set()
    for src in sources:
        for side in engine_sets(src):
            families.add(side["family_sha256"])
            sm = Path(side["plan"]).parent.name
            have = chosen.get(sm)
            if have is not None and have[0]["key_sha256"] != side["key_sha256"]:
                raise BuildError(f"two different engines for {sm} (TensorRT "
                                 f"{have[0]['key']['tensorrt']} from {have[1]}, "
                                 f"{side['key']['tensorrt']} from {src}); keep one runner per "
                                 "architecture")
            chosen.setdefault(sm, (side, src))
    if len(families) > 1:
        raise BuildError(f"the engines come from {len(families)} different models or settings; "
                         "rebuild them all from the same ONNX model and backends.tensorrt")
    for sm, (side, src) in sorted(chosen.items()):
        target = dest / names.ENGINES_DIR / sm
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / side["plan"], target / names.ENGINE_PLAN)
        (target / names.ENGINE_SIDECAR).write_bytes(ek.dumps(side))
    return [side for side, _ in (chosen[sm] for sm in sorted(chosen))]


def describe(side: ek.Sidecar) -> dict[str, Any]:
    """One engine's line in a manifest: where it is and the key it was built for."""
    return {"plan": side["plan"], "plan_sha256": side["plan_sha256"], "key": side["key"],
            "key_sha256": side["key_sha256"]}

