"""package: stage outputs -> `dist/<name>/<version>/<backend>/{bundle.tar.gz, manifest.json}`.

The bundle is seed 000's layout (config.json, model.safetensors, tokenizer/, thresholds.json,
label_order.json, registry_label_fields.json, manifest.json; plus registry_model_int8.onnx for the
ONNX bundle). Files are streamed into the tarball straight from each stage's output directory and
their digests come from the upstream stamps, so packaging reads each byte once and hashes only
the tarball. Only this stage and publishing see the resolved version.
"""
from __future__ import annotations

import json
import os

from ..artifacts import manifest as mf
from ..artifacts.digest import sha256_bytes
from ..artifacts.tarball import write_tarball
from ..model.bundle import Bundle
from ..model.version import resolve
from .base import Layout, RunContext, StagePlan, params, tool_versions

CODE_VERSION = "1"
# backend -> (stage, files taken from its output dir; None = all of them)
CONTENTS: dict[str, tuple[tuple[str, tuple[str, ...] | None], ...]] = {
    "pytorch": (("weights", None), ("tokenizer", None), ("labels", None), ("thresholds", None)),
    "onnx": (("weights", None), ("tokenizer", None), ("labels", None), ("thresholds", None),
             ("int8", None)),  # the int8 model and, past 2 GB, its external data file
}
# backend -> stages whose stamp report goes into the manifest's `parity` section (gates, smoke test)
REPORTS: dict[str, tuple[str, ...]] = {"pytorch": (), "onnx": ("parity", "smoke")}
TOOLS = {"pytorch": ("modelkiln", "torch", "transformers", "tokenizers", "safetensors"),
         "onnx": ("modelkiln", "torch", "transformers", "tokenizers", "safetensors", "optimum",
                  "optimum-onnx", "onnx", "onnxruntime")}


SPEC_KEYS = ("apiVersion", "kind", "name", "version", "description", "source", "labels",
             "thresholds", "metadata")


def spec_digest(bundle: Bundle, backend: str) -> str:
    """Digest of the part of the spec one backend's bundle is built from (canonical JSON, so
    comments and key order do not count). Other backends, publish targets and registry roles are
    left out: disabling ONNX or moving the S3 prefix does not repackage the PyTorch bundle."""
    sections = dict(bundle.sections)
    relevant = {k: sections.get(k, "null") for k in SPEC_KEYS}
    relevant["backend"] = json.dumps(json.loads(sections["backends"]).get(backend))
    return sha256_bytes(json.dumps(relevant, sort_keys=True, separators=(",", ":")).encode())


def plan(bundle: Bundle, layout: Layout) -> list[StagePlan]:
    version = resolve(bundle.version, bundle.root)
    plans = []
    for backend in bundle.backends:
        stages = [s for s, _ in CONTENTS[backend]] + list(REPORTS[backend])
        plans.append(StagePlan(
            task=f"package:{bundle.name}-{backend}", stage="package", bundle=bundle.name,
            doc=f"pack {bundle.name} {version} ({backend}) into bundle.tar.gz + manifest.json",
            out_dir=layout.dist_dir(bundle.name, version, backend),
            stamp=layout.stamp(bundle.name, f"package-{backend}"),
            inputs=(), upstream=tuple(f"{s}:{bundle.name}" for s in stages),
            params=params(CODE_VERSION, name=bundle.name, version=version, backend=backend,
                          description=bundle.description, metadata=dict(bundle.metadata),
                          spec=spec_digest(bundle, backend)),
            backend=backend, extra=(("version", version),),
        ))
    return plans


def run(ctx: RunContext) -> dict:
    backend = ctx.plan.backend or "pytorch"
    members, files, inputs = [], [], {}
    for stage, wanted in CONTENTS[backend]:
        stamp = ctx.up_stamp(stage)
        for rel, digest in sorted(stamp["outputs"].items()):
            if wanted is None or rel in wanted:
                path = ctx.up(stage) / rel
                members.append((rel, path))
                files.append({"path": rel, "size": path.stat().st_size, "sha256": digest})
        inputs.update({k: v for k, v in stamp["inputs"].items() if not k.startswith("@")})
    reports = {stage: ctx.up_stamp(stage)["report"] for stage in REPORTS[backend]}
    version = ctx.plan.get("version") or ctx.bundle.version
    manifest = mf.build(
        name=ctx.bundle.name, version=version, backend=backend, files=files, inputs=inputs,
        spec_digest=spec_digest(ctx.bundle, backend), tools=tool_versions(*TOOLS[backend]),
        parity=reports, metadata=dict(ctx.bundle.metadata))
    inner = ctx.out / ".bundle-manifest.json"
    inner.write_bytes(mf.dumps(manifest))
    archive = ctx.out / mf.ARCHIVE
    size, digest = write_tarball(archive, [*members, (mf.MANIFEST, inner)])
    os.unlink(inner)
    ctx.cache.remember(archive, digest)
    published = mf.with_archive(manifest, size, digest)
    (ctx.out / mf.MANIFEST).write_bytes(mf.dumps(published))
    ctx.log(f"package:{ctx.bundle.name}-{backend}: {len(files)} files -> {ctx.plan.out_dir}")
    return {"archive_sha256": published["archive"]["sha256"],
            "aggregate_sha256": manifest["aggregate_sha256"], "version": version}
