"""Packaging a bundle: `modelkiln.artifacts.tarball.write_tarball` vs GNU `tar czf` on the same files.

The bundle: a random float32 `model.safetensors` of about --size-mib (weights barely compress), a
real fast tokenizer, config, labels and thresholds JSON, laid out as the PyTorch bundle is. Each
packer runs in its own process on a warm page cache; we report wall time (best of --repeat), output
size, and peak RSS (os.wait4 of that process: the interpreter plus the packer; for tar, tar and
its gzip). modelkiln's output is then extracted with `tar xzf` and every file's sha256 compared with
its source; a second run checks the output is byte-identical (determinism). Note: write_tarball
fsyncs its output before returning, `tar czf` does not; the modelkiln figure includes that fsync.

    .venv/bin/python bench/bench_package.py [--size-mib 1024] [--repeat 2] [--keep]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PYTHON, MiB, header, run_measured, save_weights, table, warm, workdir
from modelkiln.artifacts.digest import sha256_file

PACK = r"""
import json, sys, time, resource
from pathlib import Path
from modelkiln.artifacts.tarball import write_tarball
members = [(a, Path(p)) for a, p in json.loads(Path(sys.argv[1]).read_text())]
t0 = time.perf_counter()
size, digest = write_tarball(Path(sys.argv[2]), members)
print(json.dumps({"s": time.perf_counter() - t0, "size": size, "sha256": digest,
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""
IMPORT_ONLY = r"""
import json, resource
import modelkiln.artifacts.tarball
print(json.dumps({"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def make_bundle(src: Path, size: int) -> list[tuple[str, Path]]:
    """The PyTorch bundle's files under `src`; returns sorted (archive name, path) members."""
    from modelkiln.demo import REGISTRY_LABELS, make_tokenizer, synthetic_rows, write_label_files

    src.mkdir(parents=True)
    save_weights(src / "model.safetensors", size)
    (src / "config.json").write_text(json.dumps({
        "architectures": ["BertForSequenceClassification"], "hidden_size": 64,
        "id2label": dict(enumerate(REGISTRY_LABELS)), "model_type": "bert"}, indent=2) + "\n")
    make_tokenizer([r["text"] for r in synthetic_rows(REGISTRY_LABELS, 600, 0)], src / "tokenizer")
    write_label_files(src, REGISTRY_LABELS)
    (src / "thresholds.json").write_text(json.dumps({k: 0.5 for k in REGISTRY_LABELS}, indent=2))
    (src / "manifest.json").write_text(json.dumps({"name": "bench", "files": []}, indent=2))
    return sorted((p.relative_to(src).as_posix(), p) for p in src.rglob("*") if p.is_file())


def sha256_tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in root.rglob("*") if p.is_file()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="weights size in MiB (1024)")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each packer, best taken (2)")
    ap.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = ap.parse_args()
    size = args.size_mib * MiB

    header(f"packaging: write_tarball vs GNU tar czf ({args.size_mib} MiB of float32 weights)")
    root = workdir("kiln-bench-pack-", 4 * size)  # sources, two archives, one extraction
    try:
        src = root / "src"
        members = make_bundle(src, size)
        total = sum(p.stat().st_size for _, p in members)
        listing = root / "members.json"
        listing.write_text(json.dumps([(a, str(p)) for a, p in members]))
        warm(*(p for _, p in members))
        from modelkiln.artifacts.tarball import choose_level

        weights = src / "model.safetensors"
        print(f"bundle: {len(members)} files, {total / MiB:.1f} MiB; deflate level modelkiln picks "
              f"for model.safetensors: {choose_level(weights, weights.stat().st_size)}\n")

        kiln_out, tar_out = root / "kiln.tar.gz", root / "gnu.tar.gz"
        kiln_runs, tar_runs, digests, inproc = [], [], set(), []
        for _ in range(args.repeat):
            kiln_out.unlink(missing_ok=True)
            wall, rss, rc, output = run_measured([PYTHON, "-c", PACK, str(listing), str(kiln_out)])
            if rc:
                raise SystemExit(f"bench: write_tarball failed:\n{output[-3000:]}")
            rep = json.loads(output.strip().splitlines()[-1])
            digests.add(rep["sha256"])
            kiln_runs.append((wall, rss))
            inproc.append(rep["s"])
            tar_out.unlink(missing_ok=True)
            wall, rss, rc, output = run_measured(
                ["tar", "czf", str(tar_out), "-C", str(src), *(a for a, _ in members)])
            if rc:
                raise SystemExit(f"bench: tar czf failed:\n{output[-3000:]}")
            tar_runs.append((wall, rss))
        _w, _base_rss, _rc, out = run_measured([PYTHON, "-c", IMPORT_ONLY])
        base = json.loads(out.strip().splitlines()[-1])["maxrss_kb"]

        check = root / "extract"
        check.mkdir()
        _w, _r, rc, out = run_measured(["tar", "xzf", str(kiln_out), "-C", str(check)])
        readable = rc == 0
        expected = {a: sha256_file(p) for a, p in members}
        same = readable and sha256_tree(check) == expected
        shutil.rmtree(check, ignore_errors=True)

        k_best, t_best = min(kiln_runs), min(tar_runs)
        k_size, t_size = kiln_out.stat().st_size, tar_out.stat().st_size
        table(["packer", f"best wall s ({args.repeat})", "MB/s", "output MiB", "vs input",
               "peak RSS MiB"], [
            ["modelkiln write_tarball", f"{k_best[0]:.2f}", f"{total / k_best[0] / 1e6:.0f}",
             f"{k_size / MiB:.1f}", f"{k_size / total:.3f}", f"{max(r for _, r in kiln_runs) / 1024:.0f}"],
            ["GNU tar czf (gzip -6)", f"{t_best[0]:.2f}", f"{total / t_best[0] / 1e6:.0f}",
             f"{t_size / MiB:.1f}", f"{t_size / total:.3f}", f"{max(r for _, r in tar_runs) / 1024:.0f}"],
        ])
        ratio = t_best[0] / k_best[0]
        peak = max(r for _, r in kiln_runs) / 1024
        print(f"write_tarball alone (in-process, without interpreter start): {min(inproc):.2f} s")
        print(f"speed-up over tar czf: {ratio:.1f}x (target >= 10x: {'met' if ratio >= 10 else 'NOT met'})")
        print(f"modelkiln peak RSS: {peak:.0f} MiB, of which interpreter + import alone: "
              f"{base / 1024:.0f} MiB (target < 200 MB: {'met' if peak * 1.048576 < 200 else 'NOT met'})")
        print(f"modelkiln output read by `tar xzf`: {'yes' if readable else 'NO'}; every file's sha256 "
              f"matches its source: {'yes' if same else 'NO'}; byte-identical across "
              f"{args.repeat} runs: {'yes' if len(digests) == 1 else 'NO'}")
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
