"""Reliability of the commands over hostile local state: every file modelkiln keeps for itself
(verdicts, hashcache, the spec and bundle caches, stamps, doit's database, task locks, and the
directories that hold them) replaced by garbage, a torn write, JSON of the wrong shape or nested
100,000 deep, a FIFO, a character device, a symlink to /dev/zero or a directory.

    .venv/bin/python bench/reliability/hostile_state.py          # doit build, kiln plan and build
    .venv/bin/python bench/reliability/hostile_state.py --quick  # doit build only

One tiny project is built, then each case puts it back, poisons one kind of state and runs the
real command in a subprocess (tests/hostile_local_state.py). Clean: exit 0 having treated the
state as a miss, or one `kiln:` line (under doit, the failed task's line). A wrong output is an exit 0 that
left another bundle in dist/ than the one built; a hang is a command still running after 10 s
(killed); a traceback is any Python traceback in the output. Max RSS is over every command run.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BIN, Row

from helpers import make_inputs, make_project
from hostile_local_state import KINDS, RERUN, RERUN_STAMP, TARGETS, poison
from hostile_local_state import run as run_command

HANG_S = 10.0
MANIFEST = "dist/tiny/1.0.0/pytorch/manifest.json"


def _commands(quick: bool) -> dict[str, list[str]]:
    every = {"doit build": [str(BIN / "doit"), "build:tiny"],
             "kiln plan": [str(BIN / "kiln"), "plan", "bundles/tiny.yaml"],
             "kiln build": [str(BIN / "kiln"), "build", "bundles/tiny.yaml"]}
    return {"doit build": every["doit build"]} if quick else every


def _built(tmp: Path) -> tuple[Path, Path]:
    """A built project (and a no-op that recorded its verdict), and a copy of it as it was."""
    make_inputs(tmp / "inputs")
    project = make_project(tmp / "p", tmp / "inputs")
    if project.doit("build:tiny").code != 0:
        raise RuntimeError("the tiny project does not build")
    time.sleep(0.2)
    project.doit("build:tiny")
    subprocess.run(["cp", "-a", str(project.root), str(tmp / "saved")], check=True)
    return project.root, tmp / "saved"


def _restore(root: Path, saved: Path) -> None:
    shutil.rmtree(root)
    subprocess.run(["cp", "-a", str(saved), str(root)], check=True)


def run(quick: bool) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="kiln-hostile-state-") as tmp:
        root, saved = _built(Path(tmp))
        for label, argv in _commands(quick).items():
            row, rss = _in_child(functools.partial(_row, label, argv, root, saved))
            row.notes.insert(0, f"max RSS of any command {rss >> 10} MiB")
            rows.append(row)
    return rows


def _in_child(make: Callable[[], Row]) -> tuple[Row, int]:
    """`make()` run in a forked child, whose children are only the case commands: so its
    RUSAGE_CHILDREN peak (KiB) is theirs, not the project build's."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            row = make()
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            os.write(w, json.dumps([dataclasses.asdict(row), peak]).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    fields, peak = json.loads(data)
    return Row(**fields), int(peak)


def _row(label: str, argv: list[str], root: Path, saved: Path) -> Row:
    row = Row(f"hostile local state through {label}")
    clean = wrong = hangs = skipped = 0
    for target in TARGETS:
        for kind in KINDS:
            _restore(root, saved)
            if target in RERUN:
                (root / RERUN_STAMP.format(name="tiny")).unlink()
            if not all(poison(p, kind) for p in TARGETS[target](root)):
                skipped += 1
                continue
            row.trials += 1
            out = run_command(argv, root, HANG_S)
            case = f"{target}={kind}"
            if out.hang:
                hangs += 1
                row.violation(f"{case}: hang (> {HANG_S:.0f} s)")
            elif out.traceback:
                row.crashed(f"{case}: {out.output.strip().splitlines()[-1][:120]}")
            elif not out.clean:
                row.violation(f"{case}: rc {out.code} without one kiln: line")
            elif (out.code == 0 and "build" in label
                  and (root / MANIFEST).read_bytes() != (saved / MANIFEST).read_bytes()):
                wrong += 1
                row.violation(f"{case}: exit 0 with another bundle in dist/")
            else:
                clean += 1
    row.notes[:0] = [f"{clean} clean (miss or one kiln: line)", f"{wrong} wrong outputs",
                     f"{hangs} hangs", *([f"{skipped} skipped (no mknod)"] if skipped else [])]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="doit build only")
    args = parser.parse_args()
    for row in run(args.quick):
        print(f"{row.name}: {row.trials} cases, {row.violations} violations, "
              f"{row.tracebacks} tracebacks; {'; '.join(row.notes)}")


if __name__ == "__main__":
    main()
