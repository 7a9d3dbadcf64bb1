"""Model store: verify vs openssl, and putting a version into place vs cp, on a ~1 GiB version.

(a) `cp -r` of the payload into a fresh directory on the same filesystem (no digests, not durable).
(b) `cp -r` + `sync` of the copies (durable, still no digests).
(c) kiln: `stage_new` + `ModelStore.copy_in` of every file: the copy into place, which also takes
    every sha256 (one read of each byte, hashed on a second thread while it is written) and
    fsyncs every file (in the background while copying).
(d) kiln: `finalize` alone, right after (c): sealed manifest, fsync of the (already clean) files and
    the directories, `.pending`, rename, `current` swap. It reads no file: (c) gave the digests.
(e) (c) + (d), per run. Target: "finalizing a 1 GiB version adds under 10% over copying it into
    place", read as (e)/(c) - 1. (e) is also shown against (a) and (b), which take no digests.
(f) the old path for reference: `stage_new` + `cp -r` into staging + `finalize`, which then reads
    and hashes every byte after the copy.
Verify: `ModelStore.verify` always re-reads and hashes every byte; peer `openssl dgst -sha256` over
the same files in one process. Target: verify <= 1.2x openssl.

Two layouts: one 1 GiB weights file (hashing cannot be split), and four 256 MiB shards (copy_in,
verify and finalize work on several files at once; openssl and cp go file by file). Warm page
cache for the sources; `sync` before every timed run so none starts with dirty pages; the steps
run interleaved. CPU seconds (this process's threads + cp/sync children) are shown beside the wall
times: on a shared machine they say what a step costs when no core is free to overlap work onto.

    .venv/bin/python bench/bench_store.py [--size-mib 1024] [--repeat 3] [--keep]
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MiB, header, table, warm, workdir, write_random  # noqa: E402

from modelkiln.store import ModelStore  # noqa: E402


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


def cpu() -> float:
    """CPU seconds used so far by this process (all threads) and its waited-for children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


CPU: dict[str, list[float]] = {}  # label -> CPU seconds of each timed run


def timed(fn: Callable[[], object], repeat: int, before: Callable[[], None] | None = None,
          label: str = "") -> list[float]:
    """Wall seconds of `fn` over `repeat` runs (`before` runs untimed ahead of each); the CPU
    seconds of each run go to CPU[label] (on a shared machine they move less than wall time)."""
    values = []
    for _ in range(repeat):
        if before:
            before()
        c0, t0 = cpu(), time.perf_counter()
        fn()
        values.append(time.perf_counter() - t0)
        CPU.setdefault(label, []).append(cpu() - c0)
    return values


def run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def med(values: list[float]) -> float:
    return statistics.median(values)


def bench_layout(base: Path, layout: str, size: int, repeat: int
                 ) -> tuple[list[list[str]], list[list[str]]]:
    """(timing rows (a)-(f), comparison rows) for one layout."""
    src = base / f"src-{layout}"
    files = make_payload(src, layout, size)
    total = sum(p.stat().st_size for p in files)
    root = base / f"store-{layout}"
    store = ModelStore(root)
    counter = iter(range(10**6))
    names: list[str] = []
    split: list[tuple[float, float]] = []  # (copy_in, finalize) of each (c)+(d) run

    def old_path() -> None:
        version = f"v{next(counter)}"
        names.append(version)
        with store.stage_new("bench", version) as tmp:
            run(["cp", "-r", f"{src}/.", str(tmp)])
        store.finalize("bench", version, {"bench": layout})

    def copy_in_and_finalize() -> None:
        version = f"v{next(counter)}"
        names.append(version)
        c0, t0 = cpu(), time.perf_counter()
        with store.stage_new("bench", version) as tmp:
            store.copy_in(tmp, src)
        c1, t1 = cpu(), time.perf_counter()
        store.finalize("bench", version, {"bench": layout})
        split.append((t1 - t0, time.perf_counter() - t1))
        CPU.setdefault(f"{layout}:c", []).append(c1 - c0)
        CPU.setdefault(f"{layout}:d", []).append(cpu() - c1)

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
    t_cp, t_cp_sync, t_e, t_old = [], [], [], []
    for _ in range(repeat):  # interleaved, so a burst of load on a shared machine hits all alike
        t_cp += timed(cp, 1, clean, f"{layout}:a")
        t_cp_sync += timed(cp_sync, 1, clean, f"{layout}:b")
        t_e += timed(copy_in_and_finalize, 1, clean, f"{layout}:e")
        t_old += timed(old_path, 1, clean, f"{layout}:f")
    t_c, t_d = [c for c, _ in split], [d for _, d in split]
    version = names[-1]
    warm(*[p for p in (root / "bench/versions" / version).rglob("*") if p.is_file()])
    rel = sorted(str(p) for p in (root / "bench/versions" / version).rglob("*")
                 if p.is_file() and p.name != "manifest.json")
    t_ossl = med(timed(lambda: run(["openssl", "dgst", "-sha256", *rel]), repeat))
    t_verify = med(timed(lambda: store.verify("bench", version), repeat))
    t_verify1 = med(timed(lambda: ModelStore(root, workers=1).verify("bench", version), repeat))
    gib = total / (1 << 30)
    label = f"{layout} ({gib:.2f} GiB, {len(files)} files)"
    timing = [[label, step, what, f"{med(v):.3f}", f"{min(v):.3f}",
               f"{med(CPU[f'{layout}:{step[1]}']):.3f}"] for step, what, v in (
        ("(a)", "cp -r", t_cp), ("(b)", "cp -r + sync", t_cp_sync),
        ("(c)", "stage_new + copy_in (sha256 + fsync while copying)", t_c),
        ("(d)", "finalize alone, after (c)", t_d), ("(e)", "(c) + (d)", t_e),
        ("(f)", "old path: stage_new + cp -r + finalize (hashes after)", t_old))]
    e, c, a, b, old = med(t_e), med(t_c), med(t_cp), med(t_cp_sync), med(t_old)

    def pct(x: float, y: float) -> str:
        return f"{(x / y - 1) * 100:+.1f}%"

    compare = [
        [label, "verify", f"{t_verify:.3f}", "openssl dgst -sha256", f"{t_ossl:.3f}",
         f"{t_verify / t_ossl:.2f}x", "<= 1.20x"],
        [label, "verify, 1 thread", f"{t_verify1:.3f}", "openssl dgst -sha256", f"{t_ossl:.3f}",
         f"{t_verify1 / t_ossl:.2f}x", "<= 1.20x"],
        [label, "(e) copy_in + finalize", f"{e:.3f}", "(c) copy_in", f"{c:.3f}", pct(e, c),
         "< +10% (finalize's overhead)"],
        [label, "(e) copy_in + finalize", f"{e:.3f}", "(a) cp -r", f"{a:.3f}", pct(e, a),
         "(peer takes no digests, no fsync)"],
        [label, "(e) copy_in + finalize", f"{e:.3f}", "(b) cp -r + sync", f"{b:.3f}", pct(e, b),
         "(durable peer, no digests)"],
        [label, "(f) old: cp -r + finalize", f"{old:.3f}", "(a) cp -r", f"{a:.3f}", pct(old, a),
         "(before: finalize hashed)"],
    ]
    return timing, compare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--layout", choices=["single", "sharded", "both"], default="both")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    size = args.size_mib * MiB
    base = workdir("kiln-bench-store-", need_bytes=size * 6)
    header(f"bench_store: copy_in, finalize and verify of a {args.size_mib} MiB version "
           f"(median of {args.repeat}, warm page cache, store and copies on {base})")
    t0 = time.perf_counter()
    out = subprocess.run(["openssl", "speed", "-seconds", "1", "-bytes", "1048576", "sha256"],
                         capture_output=True, text=True).stdout.splitlines()
    speed = out[-1].split()[-1].rstrip("k") if out else ""
    rate = f"{float(speed) / 1e3:.0f} MB/s" if speed.replace(".", "").isdigit() else "n/a"
    print(f"openssl speed sha256, 1 MiB blocks, one core: {rate}")
    print(f"(probe took {time.perf_counter() - t0:.1f} s)\n")
    timing: list[list[str]] = []
    rows: list[list[str]] = []
    try:
        for layout in (["single", "sharded"] if args.layout == "both" else [args.layout]):
            t, r = bench_layout(base, layout, size, args.repeat)
            timing += t
            rows += r
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    table(["version", "step", "what", "median s", "min s", "CPU s (median)"], timing)
    table(["version", "kiln", "kiln s", "peer", "peer s", "kiln vs peer", "target"], rows)


if __name__ == "__main__":
    main()
