"""Model store: publishing a bundle tarball into the store vs GNU tar, and verify vs openssl.

The real publish path is measured: `publish_to_store` takes a packaged `dist/` directory
(deterministic `bundle.tar.gz` + published manifest) and makes it a store version.

(a) `tar xzf bundle.tar.gz -C dir`: unpack only; no digests, nothing fsynced.
(b) (a) + `sync` of the unpacked files: durable, still no digests.
(c) putting the version in place, durably: `stage_new` + `safe_extract` into staging with every
    file's size and sha256 checked as it is written and every file fsynced, then discarded.
    (Publish itself unpacks without fsync and lets finalize flush, so nothing is flushed twice.)
(e) `publish_to_store` end to end: checks the tarball's manifest, (c), checks the unpacked tree,
    then `finalize` (fsync of every file and directory, sealed manifest, rename, `current` swap).
(d) = (e) - (c): what finalizing adds. Target: "finalizing adds under 10% over putting the version
    in place", read as (e)/(c) - 1.
Verify: `ModelStore.verify` re-reads and hashes every byte; peer `openssl dgst -sha256` over the
same files in one process. Target: verify <= 1.2x openssl.

Two layouts: one weights file, and four shards. Warm page cache for the tarball; `sync` before
every timed run; steps interleaved. CPU seconds (this process's threads + tar/sync children) are
shown beside wall times: on a shared machine they move less.

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
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MiB, header, table, warm, workdir, write_random
from modelkiln.artifacts import manifest as mf
from modelkiln.artifacts.digest import StatCache
from modelkiln.artifacts.extract import safe_extract
from modelkiln.artifacts.tarball import write_tarball
from modelkiln.publish.store import publish_to_store
from modelkiln.store import ModelStore

CPU: dict[str, list[float]] = {}  # label -> CPU seconds of each timed run


def make_dist(base: Path, layout: str, size: int) -> Path:
    """A packaged dist directory (tarball + published manifest) of a ~`size`-byte bundle."""
    src = base / f"src-{layout}"
    src.mkdir(parents=True)
    shards = 1 if layout == "single" else 4
    files = []
    for i in range(shards):
        name = "model.safetensors" if shards == 1 else f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        write_random(src / name, size // shards)
        files.append(name)
    (src / "tokenizer").mkdir()
    for rel, n in (("config.json", 700), ("tokenizer/tokenizer.json", 700_000),
                   ("tokenizer/vocab.txt", 230_000), ("thresholds.json", 900)):
        (src / rel).write_bytes(os.urandom(n // 2).hex().encode()[:n])
        files.append(rel)
    manifest = mf.build(name="bench", version="1", backend="pytorch",
                        files=mf.file_entries(src, files), inputs={}, spec_digest="0" * 64,
                        tools={"modelkiln": "bench"})
    dist = base / f"dist-{layout}"
    dist.mkdir()
    inner = base / f"inner-{layout}.json"
    inner.write_bytes(mf.dumps(manifest))
    tsize, digest = write_tarball(dist / mf.ARCHIVE,
                                  [*((rel, src / rel) for rel in files), (mf.MANIFEST, inner)])
    (dist / mf.MANIFEST).write_bytes(mf.dumps(mf.with_archive(manifest, tsize, digest)))
    shutil.rmtree(src)
    return dist


def cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn: Callable[[], object], before: Callable[[], None], label: str) -> float:
    before()
    c0, t0 = cpu(), time.perf_counter()
    fn()
    CPU.setdefault(label, []).append(cpu() - c0)
    return time.perf_counter() - t0


def run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def med(values: list[float]) -> float:
    return statistics.median(values)


def bench_layout(base: Path, layout: str, size: int, repeat: int
                 ) -> tuple[list[list[str]], list[list[str]]]:
    dist = make_dist(base, layout, size)
    published = mf.loads(dist.joinpath(mf.MANIFEST).read_bytes(), str(dist))
    sizes: dict[str, int | None] = {f["path"]: f["size"] for f in published["files"]}
    sizes[mf.MANIFEST] = None
    sha256s = {f["path"]: f["sha256"] for f in published["files"]}
    root = base / f"store-{layout}"
    store = ModelStore(root)
    counter = iter(range(10**6))
    names: list[str] = []
    built = StatCache(base / "hashcache.json")
    built.digest(dist / mf.ARCHIVE)

    def tar() -> None:
        dest = base / f"x-{next(counter)}"
        dest.mkdir()
        run(["tar", "xzf", str(dist / mf.ARCHIVE), "-C", str(dest)])

    def tar_sync() -> None:
        dest = base / f"x-{next(counter)}"
        dest.mkdir()
        run(["tar", "xzf", str(dist / mf.ARCHIVE), "-C", str(dest)])
        run(["sync", *[str(p) for p in dest.rglob("*") if p.is_file()]])

    def unpack() -> None:
        version = f"u{next(counter)}"
        with store.stage_new("bench", version) as tmp:
            safe_extract(dist / mf.ARCHIVE, tmp / "bundle", sizes=sizes, sha256s=sha256s,
                         durable=True)
        store.discard("bench", version)

    def publish() -> None:
        version = f"v{next(counter)}"
        names.append(version)
        # As after `kiln build`: the package stage left the tarball's digest in the stat cache.
        publish_to_store(dist, root, "bench", version, {"bench": layout}, store=store,
                         cache=built)

    def clean() -> None:
        keep = names[-1] if names else None  # the last version stays for the verify runs
        for d in [*root.glob("bench/versions/*"), *base.glob("x-*")]:
            if d.name != keep:
                shutil.rmtree(d)
        os.sync()

    warm(dist / mf.ARCHIVE)
    t: dict[str, list[float]] = {k: [] for k in "abce"}
    for _ in range(repeat):  # interleaved, so a burst of load hits every step alike
        t["a"].append(timed(tar, clean, f"{layout}:a"))
        t["b"].append(timed(tar_sync, clean, f"{layout}:b"))
        t["c"].append(timed(unpack, clean, f"{layout}:c"))
        t["e"].append(timed(publish, clean, f"{layout}:e"))
    version = names[-1]
    vdir = root / "bench/versions" / version
    payload = sorted(str(p) for p in vdir.rglob("*") if p.is_file() and p.parent != vdir)
    warm(*map(Path, payload))
    t_ossl = med([timed(lambda: run(["openssl", "dgst", "-sha256", *payload]), lambda: None,
                        "ossl") for _ in range(repeat)])
    t_verify = med([timed(lambda: store.verify("bench", version), lambda: None, "verify")
                    for _ in range(repeat)])
    a, b, c, e = (med(t[k]) for k in "abce")
    label = f"{layout} ({size / (1 << 30):.2f} GiB, {len(payload)} files)"
    cpu_of = {k: med(CPU[f"{layout}:{k}"]) for k in "abce"}
    timing = [[label, f"({k})", what, f"{med(t[k]):.3f}", f"{min(t[k]):.3f}", f"{cpu_of[k]:.3f}"]
              for k, what in (("a", "tar xzf"), ("b", "tar xzf + sync"),
                              ("c", "stage_new + safe_extract (sha256 checked, fsynced)"),
                              ("e", "publish_to_store (unpack, check, finalize)"))]
    timing.append([label, "(d)", "(e) - (c): finalize and checks", f"{e - c:.3f}", "", ""])

    def pct(x: float, y: float) -> str:
        return f"{(x / y - 1) * 100:+.1f}%"

    compare = [
        [label, "verify", f"{t_verify:.3f}", "openssl dgst -sha256", f"{t_ossl:.3f}",
         f"{t_verify / t_ossl:.2f}x", "<= 1.20x"],
        [label, "(e) publish_to_store", f"{e:.3f}", "(c) unpack into staging", f"{c:.3f}",
         pct(e, c), "< +10% (finalize's overhead)"],
        [label, "(e) publish_to_store", f"{e:.3f}", "(a) tar xzf", f"{a:.3f}", pct(e, a),
         "(peer: no digests, no fsync)"],
        [label, "(e) publish_to_store", f"{e:.3f}", "(b) tar xzf + sync", f"{b:.3f}", pct(e, b),
         "(durable peer, no digests)"],
    ]
    return timing, compare


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--layout", choices=["single", "sharded", "both"], default="both")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    size = args.size_mib * MiB
    base = workdir("kiln-bench-store-", need_bytes=size * 6)
    header(f"bench_store: publish_to_store and verify of a {args.size_mib} MiB bundle "
           f"(median of {args.repeat}, warm page cache, store on {base})")
    timing: list[list[str]] = []
    rows: list[list[str]] = []
    try:
        for layout in (["single", "sharded"] if args.layout == "both" else [args.layout]):
            tm, r = bench_layout(base, layout, size, args.repeat)
            timing += tm
            rows += r
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    table(["version", "step", "what", "median s", "min s", "CPU s (median)"], timing)
    table(["version", "kiln", "kiln s", "peer", "peer s", "kiln vs peer", "target"], rows)


if __name__ == "__main__":
    main()
