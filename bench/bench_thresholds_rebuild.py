"""A thresholds-only rebuild re-packs the bundle: pack time of a ~400 MB fp32 safetensors bundle
with each tar member's deflate level chosen as before and as now, side by side in one run.

After `thresholds.default` changes, only thresholds and the package step rerun; the package step is
`write_tarball` over the weights and a few small files, so its time is the rebuild's time. The
weights are made by code with a BERT-like layout (numpy random normal fp32, fixed seed): the
safetensors header and small all-zero / all-one tensors (biases, LayerNorm) first, then the
matrices, as in a real checkpoint. Rows, each on the same files in this process, warm page cache:

- level 1 for every member: what real fp32 weights got before (deflate for ~7 %),
- head probe: the previous rule (level from how the first 256 KiB compress),
- spread sample (now): the level from a 1 MiB sample spread over the file, stored above 0.9,
- GNU tar | gzip -1: the peer, for scale.

    .venv/bin/python bench/bench_thresholds_rebuild.py [--size-mib 400] [--keep]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MiB, header, table, warm, workdir
from modelkiln.artifacts import tarball
from modelkiln.artifacts.extract import safe_extract


def make_weights(path: Path, size: int, hidden: int = 768) -> None:
    """~`size` bytes of BERT-like fp32 tensors, seeded: zero biases and unit LayerNorm weights
    sort first (as safetensors orders them by name), then random normal (std 0.02) matrices."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    tensors: dict[str, np.ndarray] = {
        "embeddings.LayerNorm.bias": np.zeros(hidden, np.float32),
        "embeddings.LayerNorm.weight": np.ones(hidden, np.float32),
        "embeddings.position_embeddings.weight": np.zeros((514, hidden), np.float32),
        "embeddings.token_type_embeddings.weight": np.zeros((2, hidden), np.float32),
    }
    left, i = size - sum(t.nbytes for t in tensors.values()), 0
    while left > 0:
        rows = min(3072, max(1, left // (hidden * 4)))
        tensors[f"encoder.layer.{i:03d}.weight"] = (
            rng.standard_normal((rows, hidden), np.float32) * np.float32(0.02))
        tensors[f"encoder.layer.{i:03d}.bias"] = np.zeros(rows, np.float32)
        left -= rows * hidden * 4 + rows * 4
        i += 1
    save_file(tensors, str(path))


def head_probe(path: Path, size: int) -> int:
    """The previous rule, kept here to measure against: the level from the first 256 KiB."""
    if size < 64 * 1024:
        return 6
    with open(path, "rb") as f:
        sample = f.read(256 * 1024)
    ratio = len(zlib.compress(sample, 1)) / max(1, len(sample))
    return 0 if ratio > 0.9 else 1 if ratio > 0.5 else 6


def pack(out: Path, members: list[tuple[str, Path]],
         rule: Callable[[Path, int], int]) -> tuple[float, int, str]:
    real = tarball.choose_level
    tarball.choose_level = rule  # write_tarball looks the rule up at call time
    try:
        t0 = time.perf_counter()
        size, digest = tarball.write_tarball(out, members)
        return time.perf_counter() - t0, size, digest
    finally:
        tarball.choose_level = real


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=400)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    work = workdir("kiln-bench-thr-", need_bytes=5 * args.size_mib * MiB)
    try:
        src = work / "src"
        (src / "tokenizer").mkdir(parents=True)
        weights = src / "model.safetensors"
        make_weights(weights, args.size_mib * MiB)
        (src / "thresholds.json").write_text(json.dumps({f"l{i}": 0.5 for i in range(40)}))
        (src / "label_order.json").write_text(json.dumps([f"l{i}" for i in range(40)]))
        (src / "config.json").write_text(json.dumps({"architectures": ["MPNetForSequenceClassification"]}))
        (src / "tokenizer" / "tokenizer.json").write_text(
            json.dumps({"vocab": {f"w{i}": i for i in range(30_000)}}))
        members = sorted((str(p.relative_to(src)), p) for p in src.rglob("*") if p.is_file())
        warm(*(p for _n, p in members))
        header("thresholds-only rebuild: pack time")
        size = weights.stat().st_size
        print(f"weights: {size / MiB:.1f} MiB fp32 safetensors; level chosen for them: "
              f"head probe {head_probe(weights, size)}, spread sample "
              f"{tarball.choose_level(weights, size)}\n")
        rows, outputs = [], {}
        for label, rule in [("level 1 for every member (before, real weights)", lambda p, s: 1),
                            ("head probe, first 256 KiB (previous rule)", head_probe),
                            ("spread 1 MiB sample, stored above 0.9 (now)", tarball.choose_level)]:
            out = work / f"{len(rows)}.tar.gz"
            secs, n, digest = pack(out, members, rule)
            outputs[label] = (out, digest)
            rows.append([label, f"{secs:.2f}", f"{n / MiB:.1f}", f"{n / sum(p.stat().st_size for _m, p in members):.3f}"])
        t0 = time.perf_counter()
        subprocess.run(f"tar -C {src} --sort=name --mtime=@0 --owner=0 --group=0 -cf - . "
                       f"| gzip -1 -n > {work / 'gnu.tar.gz'}", shell=True, check=True)
        gnu = (work / "gnu.tar.gz").stat().st_size
        rows.append(["GNU tar | gzip -1 (peer)", f"{time.perf_counter() - t0:.2f}", f"{gnu / MiB:.1f}",
                     f"{gnu / sum(p.stat().st_size for _m, p in members):.3f}"])
        table(["packer", "pack s", "MiB", "out/in"], rows)
        now, digest = outputs["spread 1 MiB sample, stored above 0.9 (now)"]
        again = pack(work / "again.tar.gz", members, tarball.choose_level)[2]
        got = safe_extract(now, work / "x")
        print(f"\nnow: byte-identical on a second pack: {again == digest}; extracted by modelkiln: "
              f"{len(got)} files")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
