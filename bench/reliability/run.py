"""The reliability campaign: repeat the store, publish, archive and spec trials and print one table
(trials, violations, tracebacks per row). Goal: 0 violations and 0 tracebacks in every row.

    .venv/bin/python bench/reliability/run.py            # the full counts (tens of minutes)
    .venv/bin/python bench/reliability/run.py --quick    # a smoke run of every row (a few minutes)
    .venv/bin/python bench/reliability/run.py --only store_trials,specs

Trial modules beside this file (`store_trials`, `publish_trials`, `archives`, `specs`) each expose
`run(quick: bool) -> list[Row]` (common.py); those present are run in that order. Some rows need
root (a tmpfs for disk-full trials) and say so in their notes when they cannot run.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Row

MODULES = ("store_trials", "publish_trials", "archives", "specs")


def _rows(module: str, quick: bool) -> list[Row]:
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return []
        raise
    try:
        got = list(mod.run(quick))
    except Exception:
        return [Row(f"{module}: the trial module itself failed", 0, 0, 1,
                    [traceback.format_exc().strip().splitlines()[-1]])]
    return [r if isinstance(r, Row) else Row(*r) for r in got]


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
