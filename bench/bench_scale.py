"""How `kiln plan` and a no-op `doit build` grow with 10 / 100 / 1,000 bundles, warm on one machine
and on a cold runner that has only the action records (no build/, no .kiln/) in a shared cache.

Setup (not measured): the largest project (bundles share one tiny checkpoint, as in
bench_noop.py) is built once for real and writes every task to an action cache on a SeaweedFS
started here; the smaller projects are the first N bundles of it, built by restoring from that
cache. Measured, each a fresh interpreter, median and min of R runs:
- warm: `kiln plan` and `doit build` in a built project (every task up to date, the bundles'
  verdicts recorded), and which heavy modules (bench/_common.HEAVY) either imported; measured
  with the S3 server stopped, as on a developer's machine (a warm no-op contacts no server);
- the first no-op after the build (one run): it checks every stamp and records the verdicts;
- cold runner: `kiln plan --cache s3://...` in a fresh copy with no build/ and no .kiln/ (removed
  before every run), which hashes the inputs once and reads one action record per task.

    .venv/bin/python bench/bench_scale.py [--sizes 10,100,1000] [--runs 5] [--jobs 2] [--keep]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import (  # noqa: E402
    HEAVY,
    PYTHON,
    header,
    make_project,
    probe,
    run_measured,
    secs,
    start_s3,
    table,
    workdir,
)


def kiln_build(root: Path, env: dict[str, str], *args: str) -> float:
    wall, _rss, rc, out = run_measured([PYTHON, "-m", "modelkiln.cli", "build", *args], root, env)
    if rc:
        print(out[-4000:], file=sys.stderr)
        raise SystemExit(f"bench: build failed in {root}")
    return wall


def fresh_bytecode() -> None:
    """Compile modelkiln's modules as an install does. Where PYTHONDONTWRITEBYTECODE is set, a
    module edited since its .pyc was written is compiled again in every timed process (~0.2 s)."""
    import compileall

    import modelkiln

    compileall.compile_dir(Path(modelkiln.__file__).parent, quiet=1)


def cpu_reference() -> float:
    """Best of 3 timings of a fixed pure-Python loop, in a fresh interpreter."""
    import subprocess

    code = ("import time\nbest = 9.0\nfor _ in range(3):\n    t = time.perf_counter(); s = 0\n"
            "    for i in range(3_000_000): s += i\n    best = min(best, time.perf_counter() - t)\n"
            "print(best)")
    return float(subprocess.run([PYTHON, "-c", code], capture_output=True, text=True,
                                check=True).stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    header(f"scaling: kiln plan and no-op doit build at {sizes} bundles, warm and cold runner")
    fresh_bytecode()
    print(f"cpu reference: {cpu_reference():.3f} s for 3M pure-Python additions (this VM's speed "
          "varies by up to ~30% from one minute to the next; compare runs by it)")
    work = workdir("kiln-bench-scale-")
    server, s3_env = start_s3(work, "bench")
    env = {**os.environ, **s3_env, "KILN_CACHE_URI": "s3://bench/cache", "KILN_CACHE_WRITE": "0"}
    os.environ.update(env)  # probe() runs with os.environ
    rows = []
    try:
        biggest = work / f"p{sizes[-1]}"
        biggest.mkdir()
        make_project(biggest, [f"b{i:04d}" for i in range(sizes[-1])])
        t = kiln_build(biggest, env, "-j", str(args.jobs), "--cache-write")
        print(f"setup: real build of {sizes[-1]} bundles writing the cache: {t:.1f} s")
        roots, cold_plans, first_noop = {}, {}, {}
        for n in sizes:
            root = roots[n] = biggest if n == sizes[-1] else work / f"p{n}"
            if root != biggest:
                root.mkdir()
                make_project(root, [f"b{i:04d}" for i in range(n)])
                t = kiln_build(root, env)
                print(f"setup: {n} bundles restored from the cache: {t:.1f} s")
            # the first no-op after a build checks every stamp and records the bundles' verdicts
            first_noop[n] = probe("doit", ["build"], root)[0]
            cold = work / f"cold{n}"
            shutil.rmtree(cold, ignore_errors=True)
            shutil.copytree(root / "bundles", cold / "bundles")
            for name in ("dodo.py", "pyproject.toml"):
                shutil.copy(root / name, cold / name)
            plan_c, summary = [], ""
            for _ in range(args.runs):
                shutil.rmtree(cold / ".kiln", ignore_errors=True)
                wall, _rep, out = probe("kiln", ["plan"], cold)
                plan_c.append(wall)
                summary = next((ln for ln in out.splitlines() if "tasks would run" in ln), "?")
            hits = re.search(r"(\d+) restored", summary)
            cold_plans[n] = (plan_c, hits.group(1) if hits else "0")
            print(f"{n} bundles: cold plan says {summary.strip()}", flush=True)
        # Warm figures are a developer's machine: nothing else running. A warm no-op contacts no
        # server (were one needed, the stopped one would show as failures and time).
        server.stop()
        for n in sizes:
            root = roots[n]
            plan_w, noop_w, heavy = [], [], set()
            for _ in range(args.runs):
                wall, rep, _out = probe("kiln", ["plan"], root)
                plan_w.append(wall)
                heavy.update(rep["heavy"])
            for _ in range(args.runs):
                wall, rep, _out = probe("doit", ["build"], root)
                noop_w.append(wall)
                heavy.update(rep["heavy"])
            plan_c, hits = cold_plans[n]
            rows.append([n, 5 * n, *secs(plan_w), *secs(noop_w), f"{first_noop[n]:.3f}",
                         *secs(plan_c), hits, ", ".join(sorted(heavy)) or "none"])
        table(["bundles", "tasks", "warm plan med s", "min s", "warm no-op doit med s", "min s",
               "first no-op after build s", "cold-runner plan med s", "min s",
               "cold: hits from records", "heavy imported (warm)"], rows)
        top = rows[-1]
        print(f"goal at {sizes[-1]} bundles: warm plan <= 1 s: {top[2]} s; warm no-op <= 1 s: "
              f"{top[4]} s; cold-runner plan in a few seconds: {top[7]} s")
        print(f"heavy modules checked in the warm runs: {', '.join(HEAVY)}")
        print(f"cpu reference after the warm runs: {cpu_reference():.3f} s")
    finally:
        server.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
