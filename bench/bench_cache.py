"""A cold CI runner: no cache vs modelkiln's action cache vs DVC's run-cache, on one SeaweedFS.

On the example bundles (`python -m modelkiln.demo bundles`: registry-v3 with ONNX, int8 and parity
gates, triage-v1 PyTorch), each runner is a fresh copy of the project with no build/, dist/ or
.kiln/. Setup (reported, not compared): one runner builds and writes modelkiln's cache; one
builds the same pipeline under DVC (dvc.yaml: one DVC stage per modelkiln task, each running
that task, deps = its input files and its upstream tasks' outputs and stamps, outs = its output
directory and stamp) and pushes outputs and run-cache. Measured, each once:

1. cold runner, no cache:               `kiln build --cache off`
2. cold runner, warm modelkiln cache:   `kiln build --cache s3://...` (read-only)
3. cold runner, DVC run-cache:          `dvc pull --run-cache` then `dvc repro --pull`
   (and, as a repository that commits dvc.lock would, with the lock file present)

Columns: wall time, stage executions (tasks whose stage code ran), bytes downloaded (modelkiln:
the restored blobs it reports; DVC: what its local cache holds after pull + repro).

    .venv/bin/python bench/bench_cache.py [--dvc /tmp/dvcenv/bin/dvc] [--keep]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import PYTHON, REPO, header, run_measured, start_s3, table, workdir  # noqa: E402


def project(root: Path, inputs: Path) -> Path:
    """A fresh runner checkout: specs, inputs, dodo.py, a pyproject marker; nothing built."""
    (root / "bundles").mkdir(parents=True)
    for spec in (REPO / "bundles").glob("*.yaml"):
        shutil.copy(spec, root / "bundles" / spec.name)
    for d in inputs.iterdir():
        shutil.copytree(d, root / "bundles" / d.name)
    shutil.copy(REPO / "dodo.py", root / "dodo.py")
    (root / "pyproject.toml").write_text('[project]\nname = "kiln-bench"\nversion = "0"\n')
    return root


def package_tasks(root: Path) -> list[str]:
    """`-t package:...` for every backend bundle: the pipeline both tools build (stages past
    packaging, like images and signatures, are left out of the comparison)."""
    from modelkiln.api import discover, load_bundles
    from modelkiln.graph.plans import plan_bundle, skipped

    out = []
    for bundle in load_bundles(discover([root / "bundles"])):
        plans = plan_bundle(bundle)
        gone = skipped(plans)
        out += [x for p in plans if p.stage == "package" and p.task not in gone
                for x in ("-t", p.task)]
    return out


def kiln(root: Path, env: dict[str, str], *args: str) -> tuple[float, str]:
    if args[0] == "build":
        args = (*args, *package_tasks(root))
    wall, _rss, rc, out = run_measured([PYTHON, "-m", "modelkiln.cli", *args], root, env)
    if rc:
        print(out[-4000:], file=sys.stderr)
        raise SystemExit(f"bench: kiln {' '.join(args)} failed in {root}")
    return wall, out


def stage_runs(out: str) -> tuple[int, int, int]:
    """(tasks doit executed, of them restored from the cache, bytes restored)."""
    executed = len(re.findall(r"^\.  \S+", out, re.M))
    restored = re.findall(r"^\S+: restored from cache \(\d+ files, ([\d,]+) bytes", out, re.M)
    return executed, len(restored), sum(int(b.replace(",", "")) for b in restored)


def dvc_yaml(root: Path) -> str:
    """One DVC stage per modelkiln task, running exactly that task (same code, same outputs)."""
    import yaml  # PyYAML: a dependency of modelkiln already

    from modelkiln.api import discover, load_bundles
    from modelkiln.graph.plans import plan_bundle, skipped

    stages: dict[str, dict[str, object]] = {}
    for bundle in load_bundles(discover([root / "bundles"])):
        plans = plan_bundle(bundle)
        gone = skipped(plans)
        by_task = {p.task: p for p in plans}
        needed = {p.task for p in plans if p.stage == "package"}
        for p in reversed(plans):  # package tasks and what they read, transitively
            if p.task in needed:
                needed.update(p.upstream)
        for p in plans:
            if p.task in gone or p.task not in needed:
                continue
            def rel(q: Path) -> str:  # inputs outside the project (modelkiln's own source) stay absolute
                return str(q.relative_to(root)) if q.is_relative_to(root) else str(q)
            deps = [rel(f) for f in p.inputs]
            deps += [x for t in p.upstream for x in (rel(by_task[t].out_dir), rel(by_task[t].stamp))]
            stages[p.task.replace(":", "_")] = {
                "cmd": f"{PYTHON} -m modelkiln.cli build --cache off -t {p.task}",
                "deps": sorted(set(deps)), "outs": [rel(p.out_dir), rel(p.stamp)]}
    return yaml.safe_dump({"stages": stages}, sort_keys=False)


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dvc", default="/tmp/dvcenv/bin/dvc", help="dvc executable (own venv)")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    header("cold CI runner: no cache vs modelkiln action cache vs DVC run-cache (same SeaweedFS)")
    work = workdir("kiln-bench-cache-")
    server, s3_env = start_s3(work, "bench")
    env = {**os.environ, **s3_env, "KILN_CACHE_WRITE": "0"}
    cache = "s3://bench/kiln"
    rows: list[list[object]] = []
    try:
        inputs = work / "inputs"
        subprocess.run([PYTHON, "-m", "modelkiln.demo", str(inputs)], check=True,
                       capture_output=True)
        wall, out = kiln(project(work / "writer", inputs), env, "build", "--cache", cache,
                         "--cache-write")
        print(f"setup: writer runner built and saved the cache in {wall:.1f} s")
        wall, out = kiln(project(work / "nocache", inputs), env, "build", "--cache", "off")
        ran, _, _ = stage_runs(out)
        rows.append(["cold runner, no cache", f"{wall:.1f}", ran, 0])
        nocache = wall
        cold = project(work / "cold", inputs)
        plan_wall, plan_out = kiln(cold, env, "plan", "--cache", cache)
        wall, out = kiln(cold, env, "build", "--cache", cache)
        ran, restored, got = stage_runs(out)
        rows.append(["cold runner, modelkiln cache", f"{wall:.1f}", ran - restored, got])
        warm = wall
        same = all((work / "nocache" / "dist").rglob("bundle.tar.gz")) and all(
            (work / "cold" / p.relative_to(work / "nocache")).read_bytes() == p.read_bytes()
            for p in (work / "nocache" / "dist").rglob("bundle.tar.gz"))
        if Path(args.dvc).exists():
            rows += dvc_rows(work, inputs, env, Path(args.dvc), server.endpoint)
        else:
            rows.append(["DVC run-cache", "not installed", "-", "-"])
        table(["runner", "wall s", "stage executions", "bytes downloaded"], rows)
        summary = next((ln for ln in plan_out.splitlines() if "tasks would run" in ln), "?")
        print(f"cold-runner `kiln plan` before the build ({plan_wall:.2f} s): {summary.strip()}")
        print(f"warm-cache runner / no-cache runner: {warm / nocache:.1%} (goal <= 10%); "
              f"tarballs byte-identical to the no-cache build: {same}")
    finally:
        server.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def dvc_rows(work: Path, inputs: Path, env: dict[str, str], dvc: Path,
             endpoint: str) -> list[list[object]]:
    def run(root: Path, *argv: str, check: bool = True) -> tuple[float, str]:
        wall, _rss, rc, out = run_measured([str(dvc), *argv], root, env)
        if rc and check:
            print(out[-4000:], file=sys.stderr)
            raise SystemExit(f"bench: dvc {' '.join(argv)} failed in {root}")
        return wall, out

    def setup(root: Path) -> None:
        (root / "dvc.yaml").write_text(dvc_yaml(root))
        run(root, "init", "--no-scm", "-q")
        run(root, "remote", "add", "-d", "bench", "s3://bench/dvc")
        run(root, "remote", "modify", "bench", "endpointurl", endpoint)
        run(root, "config", "core.analytics", "false")

    writer = project(work / "dvc-writer", inputs)
    setup(writer)
    t_repro, _ = run(writer, "repro")
    t_push, _ = run(writer, "push", "--run-cache")
    print(f"setup: DVC writer repro {t_repro:.1f} s, push --run-cache {t_push:.1f} s")
    rows: list[list[object]] = []
    for lock in (False, True):
        cold = project(work / f"dvc-cold-{lock}", inputs)
        setup(cold)
        if lock:  # as a repository that commits dvc.lock has it
            shutil.copy(writer / "dvc.lock", cold / "dvc.lock")
        # Without dvc.lock, pull fetches the run-cache, then exits 1: it cannot check out outs
        # that no lock file describes; repro is what may restore from the run-cache.
        t_pull, _ = run(cold, "pull", "--run-cache", check=False)
        # --pull: fetch the outputs of run-cache hits as they are restored (without it, the
        # run-cache entries arrive but not the bytes they name, and every stage runs again)
        t_rep, out = run(cold, "repro", *([] if lock else ["--pull"]))
        ran = len(re.findall(r"^Running stage", out, re.M))
        rows.append([f"cold runner, DVC run-cache{', dvc.lock committed' if lock else ''}",
                     f"{t_pull + t_rep:.1f} (pull {t_pull:.1f} + repro {t_rep:.1f})", ran,
                     du(cold / ".dvc" / "cache")])
    return rows


if __name__ == "__main__":
    main()
