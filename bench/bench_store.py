"""Model store: verify vs openssl, and finalize vs cp, on a ~1 GiB version (warm page cache).

(a) `ModelStore.verify` always re-reads and hashes every byte; peer: `openssl dgst -sha256` over
    the same files in one process. Target: verify <= 1.2x openssl.
(b) Putting a version into place: peer `cp -r` of the files into a fresh directory on the same
    filesystem (and `cp -r` + `sync` of the copies, since finalize makes them durable); kiln:
    `stage_new` + the same `cp -r` into the staging directory + `finalize` (sha256 of every file,
    fsync of files and directories, sealed manifest, rename, `current` swap). Target: finalize adds
    under 10% over the copy.

Two layouts: one 1 GiB weights file (hashing cannot be split), and four 256 MiB shards (verify
and finalize hash files on several threads; openssl and cp work file by file).

    .venv/bin/python bench/bench_store.py [--size-mib 1024] [--repeat 3] [--keep]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MiB, header, table, warm, workdir, write_random  # noqa: E402

from modelkiln.publish.store import ModelStore  # noqa: E402


def make_payload(src: Path, layout: str, size: int) -> list[Path]:
    """A model directory of ~`size` bytes: weights (one file or 4 shards) plus small JSON files."""
    src.mkdir(parents=True)
    files = []
    shards = 1 if layout == "single" else 4
    for i in range(shards):
        name = "model.safetensors" if shards == 1 else f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        write_random(src / name, size // shards)
        files.append(src / name)
    (src / "tokenizer").mkdir()
    for rel, n in (("config.json", 700), ("tokenizer/tokenizer.json", 700_000),
                   ("tokenizer/vocab.txt", 230_000), ("thresholds.json", 900)):
        (src / rel).write_bytes(os.urandom(n // 2).hex().encode()[:n])
        files.append(src / rel)
    return files


def timed(fn: Callable[[], object], repeat: int, before: Callable[[], None] | None = None) -> float:
    """Median wall seconds of `fn` over `repeat` runs (`before` runs untimed ahead of each)."""
    values = []
    for _ in range(repeat):
        if before:
            before()
        t0 = time.perf_counter()
        fn()
        values.append(time.perf_counter() - t0)
    return statistics.median(values)


def run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def bench_layout(base: Path, layout: str, size: int, repeat: int) -> list[list[str]]:
    src = base / f"src-{layout}"
    files = make_payload(src, layout, size)
    total = sum(p.stat().st_size for p in files)
    root = base / f"store-{layout}"
    store = ModelStore(root)
    counter = iter(range(10**6))
    names: list[str] = []

    def publish() -> None:
        version = f"v{next(counter)}"
        names.append(version)
        with store.stage_new("bench", version) as tmp:
            run(["cp", "-r", f"{src}/.", str(tmp)])
        store.finalize("bench", version, {"bench": layout})

    def clean() -> None:
        keep = names[-1] if names else None  # the last version stays for the verify runs
        for d in [*root.glob("bench/versions/*"), *base.glob("cp-*")]:
            if d.name != keep:
                shutil.rmtree(d)
        os.sync()  # start each run with no dirty pages from the previous one

    copies = iter(range(10**6))

    def cp() -> None:
        run(["cp", "-r", str(src), str(base / f"cp-{next(copies)}")])

    def cp_sync() -> None:
        dest = base / f"cp-{next(copies)}"
        run(["cp", "-r", str(src), str(dest)])
        run(["sync", *[str(p) for p in dest.rglob("*") if p.is_file()]])

    warm(*files)
    t_cp = timed(cp, repeat, clean)
    t_cp_sync = timed(cp_sync, repeat, clean)
    t_fin = timed(publish, repeat, clean)
    version = names[-1]
    warm(*[p for p in (root / "bench/versions" / version).rglob("*") if p.is_file()])
    rel = sorted(str(p) for p in (root / "bench/versions" / version).rglob("*")
                 if p.is_file() and p.name != "manifest.json")
    t_ossl = timed(lambda: run(["openssl", "dgst", "-sha256", *rel]), repeat)
    t_verify = timed(lambda: store.verify("bench", version), repeat)
    t_verify1 = timed(lambda: ModelStore(root, workers=1).verify("bench", version), repeat)
    gib = total / (1 << 30)
    label = f"{layout} ({gib:.2f} GiB, {len(files)} files)"
    return [
        [label, "verify", f"{t_verify:.3f}", "openssl dgst -sha256", f"{t_ossl:.3f}",
         f"{t_verify / t_ossl:.2f}x", "<= 1.20x"],
        [label, "verify, 1 thread", f"{t_verify1:.3f}", "openssl dgst -sha256", f"{t_ossl:.3f}",
         f"{t_verify1 / t_ossl:.2f}x", "<= 1.20x"],
        [label, "stage + cp + finalize", f"{t_fin:.3f}", "cp -r", f"{t_cp:.3f}",
         f"{(t_fin / t_cp - 1) * 100:+.0f}%", "< +10%"],
        [label, "stage + cp + finalize", f"{t_fin:.3f}", "cp -r + sync", f"{t_cp_sync:.3f}",
         f"{(t_fin / t_cp_sync - 1) * 100:+.0f}%", "(durable peer)"],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--layout", choices=["single", "sharded", "both"], default="both")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    size = args.size_mib * MiB
    base = workdir("kiln-bench-store-", need_bytes=size * 6)
    header(f"bench_store: verify and finalize of a {args.size_mib} MiB version "
           f"(median of {args.repeat}, warm page cache, store and copies on {base})")
    t0 = time.perf_counter()
    out = subprocess.run(["openssl", "speed", "-seconds", "1", "-bytes", "1048576", "sha256"],
                         capture_output=True, text=True).stdout.splitlines()
    speed = out[-1].split()[-1].rstrip("k") if out else ""
    rate = f"{float(speed) / 1e3:.0f} MB/s" if speed.replace(".", "").isdigit() else "n/a"
    print(f"openssl speed sha256, 1 MiB blocks, one core: {rate}")
    print(f"(probe took {time.perf_counter() - t0:.1f} s)\n")
    rows = []
    try:
        for layout in (["single", "sharded"] if args.layout == "both" else [args.layout]):
            rows += bench_layout(base, layout, size, args.repeat)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    table(["version", "kiln", "kiln s", "peer", "peer s", "kiln vs peer", "target"], rows)


if __name__ == "__main__":
    main()
