"""Large sharded weights (issue 23 item 5): what a one-shard change moves, and peak RSS of the
weights stage against the checkpoint's size, beside the same checkpoint as one model.safetensors.

    .venv/bin/python bench/bench_shards.py [--hidden 768] [--layers 2,8,16] [--change-layers 8]

One run, one docker-registry on loopback. Checkpoints are BERT-shaped multi-label classifiers of
seeded random float32 tensors in 4 shards (tests/weights/shard_helpers.big_checkpoint); the peer
is the same tensors saved as one model.safetensors, which the weights stage still loads whole
(the path every sharded checkpoint took before).

  peak RSS       `doit weights:tiny` in a fresh project, per size: getrusage(RUSAGE_CHILDREN) of a
                 small parent (shard_helpers.peak_rss), sharded vs single file
  one shard      the full pipeline at --change-layers: `doit build:tiny` (weights, thresholds,
                 package, OCI layout), publish into the model store and push the model artifact to
                 the registry; then one tensor of shard 3 of 4 changes (the single file: the same
                 tensor) and it all runs again as version 1.0.1. Per step: bytes written in
                 build/<name>/weights (files with a new inode), bytes the store unpacked (files
                 with one link; the rest are hard links to 1.0.0), bytes the push uploaded, and the
                 tarball (written whole: it is one gzip stream)
Prints tables; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

from _common import table  # noqa: E402
from helpers import BIN, SPEC, make_project  # noqa: E402
from modelkiln.publish.oci import push  # noqa: E402
from modelkiln.publish.store import publish_to_store  # noqa: E402
from ociregistry import DockerRegistry, find_registry  # noqa: E402
from weights.shard_helpers import (  # noqa: E402
    INDEX,
    big_project_inputs,
    bump_shard,
    peak_rss,
    shard_names,
)

MiB = 1 << 20
OCI_SPEC = SPEC + "publish:\n  oci: {host}/models/{tag}:{{version}}-{{backend}}\n"


def to_single(ckpt: Path) -> None:
    """The same tensors as one model.safetensors (the bench's own memory: the whole model)."""
    from safetensors.torch import load_file, save_file

    state: dict = {}
    for name in shard_names(ckpt):
        state.update(load_file(str(ckpt / name)))
        (ckpt / name).unlink()
    (ckpt / INDEX).unlink()
    save_file(state, str(ckpt / "model.safetensors"), metadata={"format": "pt"})


def inputs(work: Path, name: str, hidden: int, layers: int, single: bool) -> tuple[Path, int]:
    src = work / f"{name}-inputs"
    size = big_project_inputs(src, hidden=hidden, layers=layers, shards=4)
    if single:
        to_single(src / "checkpoint")
    return src, size


def memory_rows(work: Path, hidden: int, ladder: list[int]) -> list[tuple[str, ...]]:
    rows = []
    for layers in ladder:
        got = {}
        for single in (False, True):
            name = f"mem-{layers}-{'single' if single else 'sharded'}"
            src, size = inputs(work, name, hidden, layers, single)
            project = make_project(work / name, src)
            t0 = time.perf_counter()
            code, peak, out = peak_rss([str(BIN / "doit"), "weights:tiny"], project.root)
            wall = time.perf_counter() - t0
            if code != 0:
                raise SystemExit(out)
            got[single] = (peak, wall)
            shutil.rmtree(src)
            shutil.rmtree(project.root)
        rows.append((f"{size / MiB:.0f} MiB ({layers} layers)",
                     f"{got[False][0] / MiB:.0f} MiB ({got[False][1]:.1f} s)",
                     f"{got[True][0] / MiB:.0f} MiB ({got[True][1]:.1f} s)",
                     f"+{(got[True][0] - got[False][0]) / MiB:.0f} MiB"))
    return rows


def _new_bytes(directory: Path, before: dict[str, int]) -> int:
    return sum(p.stat().st_size for p in directory.iterdir()
               if p.is_file() and before.get(p.name) != p.stat().st_ino)


def _inodes(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_ino for p in directory.iterdir() if p.is_file()}


def change_rows(work: Path, reg: DockerRegistry, hidden: int, layers: int,
                single: bool) -> dict[str, str]:
    kind = "single" if single else "sharded"
    src, size = inputs(work, f"change-{kind}", hidden, layers, single)
    project = make_project(work / f"change-{kind}", src, spec=OCI_SPEC.replace(
        "{host}", reg.host).replace("{tag}", kind))
    store = work / f"store-{kind}"
    out: dict[str, str] = {"weights": f"{size / MiB:.0f} MiB"}
    before: dict[str, int] = {}
    for version in ("1.0.0", "1.0.1"):
        if version == "1.0.1":
            ckpt = project.inputs / "checkpoint"
            target = ckpt / ("model.safetensors" if single else shard_names(ckpt)[2])
            bump_shard(target)
            out["changed"] = f"{target.name}, {target.stat().st_size / MiB:.1f} MiB"
            project.edit('version: "1.0.0"', f'version: "{version}"')
        t0 = time.perf_counter()
        run = project.doit("build:tiny", timeout=3600)
        build_s = time.perf_counter() - t0
        if run.code != 0:
            raise SystemExit(run.output)
        weights = project.root / "build" / "tiny" / "weights"
        written = _new_bytes(weights, before)
        before = _inodes(weights)
        dist = project.dist("pytorch", version)
        stored = publish_to_store(dist, store, "tiny", version)
        unpacked = sum(p.stat().st_size for p in stored.bundle_path.rglob("*")
                       if p.is_file() and p.stat().st_nlink == 1)
        pushed = push(project.root / "dist" / "tiny" / version / "oci" / "pytorch", "model",
                      f"{reg.host}/models/{kind}:{version}-pytorch")
        out[version] = (f"build {build_s:.0f} s; weights written {written / MiB:.1f} MiB; "
                        f"tarball {(dist / 'bundle.tar.gz').stat().st_size / MiB:.1f} MiB; "
                        f"store unpacked {unpacked / MiB:.1f} MiB; pushed "
                        f"{pushed.bytes_uploaded / MiB:.1f} MiB ({pushed.blobs_uploaded} blobs)")
        out[f"{version}-written"] = f"{written / MiB:.1f}"
        out[f"{version}-unpacked"] = f"{unpacked / MiB:.1f}"
        out[f"{version}-pushed"] = f"{pushed.bytes_uploaded / MiB:.1f}"
        out[f"{version}-tar"] = f"{(dist / 'bundle.tar.gz').stat().st_size / MiB:.1f}"
        out[f"{version}-build"] = f"{build_s:.0f} s"
    shutil.rmtree(project.root)
    shutil.rmtree(store)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", default="2,8,16", help="the peak-RSS ladder (default 2,8,16)")
    ap.add_argument("--change-layers", type=int, default=8)
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    binary = find_registry()
    if binary is None:
        raise SystemExit("docker-registry is not installed (apt-get install docker-registry)")
    work = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    reg = DockerRegistry(binary, work / "registry")
    reg.start()
    try:
        load = os.getloadavg()
        print(f"# bench_shards: hidden {args.hidden}, load average {load[0]:.1f} at start")
        if not args.skip_memory:
            rows = memory_rows(work, args.hidden, [int(x) for x in args.layers.split(",")])
            print("\n## peak RSS of `doit weights:tiny` (getrusage of the children)\n")
            table(("checkpoint", "4 shards (kept sharded)", "one model.safetensors (peer)",
                   "peer - sharded"), rows)
        got = {s: change_rows(work, reg, args.hidden, args.change_layers, s)
               for s in (False, True)}
        print(f"\n## one tensor of one shard changes ({got[False]['weights']} of weights; "
              f"sharded: {got[False]['changed']}; peer: {got[True]['changed']})\n")
        rows = []
        for what, key in (("bytes written in build/weights", "written"),
                          ("bundle.tar.gz written", "tar"),
                          ("bytes unpacked into the store", "unpacked"),
                          ("bytes pushed to the registry", "pushed")):
            rows.append((what, f"{got[False]['1.0.0-' + key]} -> {got[False]['1.0.1-' + key]} MiB",
                         f"{got[True]['1.0.0-' + key]} -> {got[True]['1.0.1-' + key]} MiB"))
        rows.append(("doit build:tiny wall", f"{got[False]['1.0.0-build']} -> "
                     f"{got[False]['1.0.1-build']}", f"{got[True]['1.0.0-build']} -> "
                     f"{got[True]['1.0.1-build']}"))
        table(("1.0.0 -> 1.0.1 (one shard changed)", "4 shards", "one file (peer)"), rows)
        print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
        print(json.dumps(got, indent=1), file=sys.stderr)
    finally:
        reg.stop()
        shutil.rmtree(work, ignore_errors=True)
        subprocess.run(["sync"], check=False)


if __name__ == "__main__":
    main()
