"""No-op `doit build` over N generated bundles (default 100 x 5 tasks) vs stock doit `file_dep`.

Setup (not measured): a project under /tmp with one tiny seeded checkpoint shared by N specs
(`thresholds.strategy: fixed`, PyTorch backend only), built once for real with `doit -n 2 -P process`.

Peer: a plain dodo with the same N x 5 tasks whose `file_dep` are the same files each modelkiln task
reads (its inputs plus its upstream tasks' outputs) and whose `targets` are the same output files,
checked by doit's default MD5 checker; its actions do nothing. It is run once to record its state.

Measured: the first no-op of each (shown apart), then R interleaved no-op runs of each, every one a
fresh interpreter (subprocess wall time), plus `kiln plan` on the same project; and, in each
process, which heavy modules got imported and how many files modelkiln actually read to hash.

    .venv/bin/python bench/bench_noop.py [--bundles 100] [--runs 5] [--project DIR] [--keep]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HEAVY, build_project, header, make_project, probe, secs, table, workdir

PEER_DODO = '''\
"""Stock doit peer: the same tasks as modelkiln's graph, as file_dep/targets (MD5 checker)."""
import json
import os
from pathlib import Path

DOIT_CONFIG = {"backend": "sqlite3", "dep_file": ".doit-peer.sqlite3",
               "default_tasks": ["build"], "verbosity": 2}
TASKS = json.loads(Path(__file__).with_name("peer_tasks.json").read_text())


def _noop(targets):
    """Nothing to do: modelkiln built the targets; a real action would rebuild them here."""
    return all(os.path.exists(t) for t in targets)


def _gen(basename):
    def gen():
        yield {"name": None, "doc": basename}
        for t in TASKS[basename]:
            yield {"name": t["name"], "file_dep": t["file_dep"], "targets": t["targets"],
                   "task_dep": t.get("task_dep", []),
                   "actions": [(_noop, [t["targets"]])] if t["targets"] else None}
    gen.__name__ = "task_" + basename
    return gen


for _basename in TASKS:
    globals()["task_" + _basename] = _gen(_basename)
'''


def write_peer(root: Path) -> int:
    """peer_tasks.json + dodo_peer.py mirroring modelkiln's plans; returns the number of tasks."""
    from modelkiln.api import discover, load_bundles
    from modelkiln.graph.plans import plan_bundle
    from modelkiln.graph.state import walk_outputs

    groups: dict[str, list[dict]] = {}
    count = 0
    for bundle in load_bundles(discover([root / "bundles"])):
        plans = plan_bundle(bundle)
        outputs = {p.task: [str(p.out_dir / rel) for rel in walk_outputs(p.out_dir)] for p in plans}
        for p in plans:
            basename, name = p.task.split(":", 1)
            deps = [str(f) for f in p.inputs] + [f for up in p.upstream for f in outputs[up]]
            groups.setdefault(basename, []).append(
                {"name": name, "file_dep": deps, "targets": outputs[p.task]})
            count += 1
        groups.setdefault("build", []).append(
            {"name": bundle.name, "file_dep": [], "targets": [],
             "task_dep": [p.task for p in plans if p.stage == "package"]})
    (root / "peer_tasks.json").write_text(json.dumps(groups))
    (root / "dodo_peer.py").write_text(PEER_DODO)
    return count


def fresh_bytecode() -> None:
    """Compile modelkiln's modules as an install does. Where PYTHONDONTWRITEBYTECODE is set, a
    module edited since its .pyc was written is compiled again in every timed process (~0.2 s)."""
    import compileall

    import modelkiln

    compileall.compile_dir(Path(modelkiln.__file__).parent, quiet=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", type=int, default=100, help="number of generated bundles (100)")
    ap.add_argument("--runs", type=int, default=5, help="timed no-op runs of each (5)")
    ap.add_argument("--jobs", type=int, default=2, help="processes for the setup build (2)")
    ap.add_argument("--project", type=Path, help="reuse (or create and keep) this project directory")
    ap.add_argument("--keep", action="store_true", help="keep the temp project afterwards")
    args = ap.parse_args()

    header(f"no-op build: {args.bundles} bundles, modelkiln stamps vs stock doit file_dep (MD5)")
    fresh_bytecode()
    root = args.project or workdir("kiln-bench-noop-")
    names = [f"b{i:03d}" for i in range(args.bundles)]
    try:
        if not (root / "dodo.py").exists():
            root.mkdir(parents=True, exist_ok=True)
            make_project(root, names)
        if not (root / "peer_tasks.json").exists():
            setup = build_project(root, args.jobs)
            print(f"setup: first real build ({args.jobs} processes) took {setup:.1f} s (not measured)")
            tasks = write_peer(root)
            peer_first, _, _ = probe("doit", ["-f", "dodo_peer.py", "build"], root)
            print(f"setup: stock doit first run (records MD5 of every file_dep) took {peer_first:.2f} s")
        else:
            tasks = sum(len(v) for k, v in json.loads((root / "peer_tasks.json").read_text()).items()
                        if k != "build")
        print(f"project: {root} ({args.bundles} bundles, {tasks} tasks + {args.bundles} build groups)\n")

        kiln_args, peer_args = ["build"], ["-f", "dodo_peer.py", "build"]
        first_k, rep_k, _ = probe("doit", kiln_args, root)
        first_p, rep_p, _ = probe("doit", peer_args, root, {"BENCH_COUNT_MD5": "1"})
        kiln, peer, plan = [], [], []
        heavy_k, heavy_p, heavy_plan = set(rep_k["heavy"]), set(rep_p["heavy"]), set()
        hashed_k, md5_p = [], []
        for _ in range(args.runs):
            wall, rep, _ = probe("doit", kiln_args, root)
            kiln.append(wall)
            heavy_k.update(rep["heavy"])
            hashed_k.append(len(rep["kiln_hashed"]))
            wall, rep, _ = probe("doit", peer_args, root, {"BENCH_COUNT_MD5": "1"})
            peer.append(wall)
            heavy_p.update(rep["heavy"])
            md5_p.append(len(rep["md5_hashed"]))
        plan_out = ""
        for _ in range(args.runs):
            wall, rep, plan_out = probe("kiln", ["plan"], root)
            plan.append(wall)
            heavy_plan.update(rep["heavy"])
        summary = next((ln for ln in plan_out.splitlines() if "tasks would run" in ln), "?")

        def names_of(mods: set[str]) -> str:
            return ", ".join(sorted(mods)) or "none"

        table(["command", "first no-op s", f"median s ({args.runs})", "min s",
               "files hashed: first/each run", "heavy modules imported"], [
            ["modelkiln: doit build", f"{first_k:.3f}", *secs(kiln),
             "/".join(map(str, [len(rep_k["kiln_hashed"]), *hashed_k])), names_of(heavy_k)],
            ["stock doit file_dep (MD5)", f"{first_p:.3f}", *secs(peer),
             "/".join(map(str, [len(rep_p["md5_hashed"]), *md5_p])), names_of(heavy_p)],
            ["modelkiln: kiln plan", "-", *secs(plan), "-", names_of(heavy_plan)],
        ])
        print(f"modelkiln no-op time / stock doit no-op time: {min(kiln) / min(peer):.2f}x (min), "
              f"{statistics.median(kiln) / statistics.median(peer):.2f}x (median)")
        print(f"kiln plan says: {summary.strip()}")
        print(f"first no-op: modelkiln read {len(rep_k['kiln_hashed'])} files to hash them (task "
              "outputs are remembered in the stat cache as they are written)")
        print(f"heavy modules checked: {', '.join(HEAVY)}")
        met = min(kiln) <= 1.0 and statistics.median(kiln) <= 1.0
        print(f"target no-op <= 1 s: {'met' if met else 'NOT met'} (median {secs(kiln)[0]} s); "
              f"no torch/transformers in the no-op: "
              f"{'met' if not heavy_k & {'torch', 'transformers'} else 'NOT met'}")
    finally:
        if args.project is None and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        elif args.project is None:
            print(f"kept {root}")


if __name__ == "__main__":
    main()
