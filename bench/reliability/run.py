"""The reliability campaign: repeat the store, publish, archive and spec trials and print one table
(trials, violations, tracebacks per row). Goal: 0 violations and 0 tracebacks in every row.

    .venv/bin/python bench/reliability/run.py            # the full counts (tens of minutes)
    .venv/bin/python bench/reliability/run.py --quick    # a smoke run of every row (a few minutes)
    .venv/bin/python bench/reliability/run.py --only store_trials,specs

Trial modules beside this file (`store_trials`, `publish_trials`, `archives`, `specs`, then the
hostile-peer rows `hostile_trust`, `hostile_oci`, `hostile_cache`, `hostile_state`) are run in
that order when present: through `run(quick: bool) -> list[Row]` (common.py) where a module has
it, else through an adapter below that calls its row functions and reads their row records. Some rows need
root (a tmpfs for disk-full trials) and say so in their notes when they cannot run.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Row

MODULES = ("store_trials", "publish_trials", "archives", "specs",
           # hostile peers (issue 19): trust lists, OCI registries, action-cache entries, local state
           "hostile_trust", "hostile_oci", "hostile_cache", "hostile_state")


def _rows(module: str, quick: bool) -> list[Row]:
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return []
        raise
    try:
        adapter = ADAPTERS.get(module)
        got = adapter(mod, quick) if adapter else list(mod.run(quick))
        return [_as_row(r) for r in got]
    except Exception:
        return [Row(f"{module}: the trial module itself failed", 0, 0, 1,
                    [traceback.format_exc().strip().splitlines()[-1]])]


def _as_row(obj: Any) -> Row:
    """A Row from another module's row type (TrialRow, ArchivesRow, or a tuple)."""
    if isinstance(obj, Row):
        return obj
    if isinstance(obj, tuple):
        return Row(*obj)
    name = getattr(obj, "name", None) or getattr(obj, "who", "?")
    trials = getattr(obj, "trials", None)
    if trials is None:  # an archives row: an accepted hostile archive or a hang is a violation
        trials = obj.tried
        violations = obj.accepted + getattr(obj, "hangs", 0)
        name = f"hostile archives through {name}"
    else:
        violations = obj.violations
    notes = list(getattr(obj, "examples", ()) or getattr(obj, "notes", ()))
    return Row(name, trials, violations, obj.tracebacks, notes[:5])


def _publish_trials(mod: Any, quick: bool) -> list[Any]:
    kills, rounds = (10, 5) if quick else (100, 50)
    rows = [mod.sigkill_publish(kills), mod.racing_publishers(rounds, medium="file")]
    try:
        rows.append(mod.racing_publishers(rounds, medium="s3"))
    except Exception:
        rows.append(Row("racing publishers, SeaweedFS", 0, 0, 1,
                        [traceback.format_exc().strip().splitlines()[-1]]))
    return rows


def _archives(mod: Any, quick: bool) -> list[Any]:
    return [mod.archives_row()]


def _specs(mod: Any, quick: bool) -> list[Any]:
    """`specs.run(count)` returns outcome counts; a malformed refusal is a violation."""
    n = 500 if quick else 10_000
    counts = mod.run(n)
    return [Row("hostile specs through kiln validate", n, counts["malformed"],
                counts["tracebacks"])]


ADAPTERS: dict[str, Callable[[Any, bool], list[Any]]] = {
    "publish_trials": _publish_trials, "archives": _archives, "specs": _specs,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few trials per row")
    parser.add_argument("--only", help="comma-separated module names (default: all present)")
    args = parser.parse_args()
    chosen = args.only.split(",") if args.only else MODULES
    rows: list[Row] = []
    start = time.monotonic()
    for module in chosen:
        got = _rows(module.strip(), args.quick)
        rows += got
        for r in got:
            print(f"[{module}] {r.name}: {r.trials} trials, {r.violations} violations, "
                  f"{r.tracebacks} tracebacks", file=sys.stderr, flush=True)
    headers = ("trial", "trials", "violations", "tracebacks")
    body = [(r.name, str(r.trials), str(r.violations), str(r.tracebacks)) for r in rows]
    widths = [max(len(x) for x in col) for col in zip(headers, *body, strict=False)]
    for n, line in enumerate([headers, *body]):
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=False)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    for r in rows:
        for note in r.notes:
            print(f"  note [{r.name}]: {note}")
    print(f"({'quick' if args.quick else 'full'} run, {time.monotonic() - start:.0f} s)")
    bad = any(r.violations or r.tracebacks for r in rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
