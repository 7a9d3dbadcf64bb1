"""Build small but real `dist/<name>/<version>/<backend>/` bundles with modelkiln.artifacts.

The files are fakes (random weights, tiny JSON), the packaging is the real thing: the same
manifest builder and deterministic tarball writer the package stage uses.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from modelkiln.artifacts import manifest as mf
from modelkiln.artifacts.tarball import write_tarball


def bundle_files(backend: str, seed: int, weights: int) -> dict[str, bytes]:
    """Relative path -> bytes of a fake registry bundle (the layout serving code reads)."""
    rng = random.Random(seed)
    files = {
        "config.json": json.dumps({"model_type": "bert", "seed": seed}).encode(),
        "model.safetensors": rng.randbytes(weights),
        "tokenizer/tokenizer.json": json.dumps({"vocab": [f"t{i}" for i in range(50)]}).encode(),
        "tokenizer/tokenizer_config.json": b'{"do_lower_case": true}',
        "thresholds.json": json.dumps({"a": 0.5, "b": 0.25}).encode(),
        "label_order.json": b'["a", "b"]',
        "registry_label_fields.json": b'{"a": "field_a", "b": "field_b"}',
    }
    if backend == "onnx":
        files["registry_model_int8.onnx"] = rng.randbytes(max(1, weights // 4))
    return files


def make_dist(root: Path, *, name: str = "registry-v3", version: str = "3.0.0",
              backend: str = "pytorch", seed: int = 0, weights: int = 200_000,
              files: dict[str, bytes] | None = None) -> Path:
    """Write sources and package them; return the dist directory (tarball + published manifest)."""
    files = files if files is not None else bundle_files(backend, seed, weights)
    src = root / f"src-{name}-{version}-{backend}-{seed}"
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    entries = mf.file_entries(src, files)
    manifest = mf.build(name=name, version=version, backend=backend, files=entries,
                        inputs={}, spec_digest="0" * 64, tools={"modelkiln": "test"})
    dist = root / "dist" / name / version / backend / f"s{seed}"
    dist.mkdir(parents=True, exist_ok=True)
    inner = src.parent / f".inner-{src.name}.json"
    inner.write_bytes(mf.dumps(manifest))
    size, digest = write_tarball(dist / mf.ARCHIVE,
                                 [*((rel, src / rel) for rel in files), (mf.MANIFEST, inner)])
    (dist / mf.MANIFEST).write_bytes(mf.dumps(mf.with_archive(manifest, size, digest)))
    return dist
