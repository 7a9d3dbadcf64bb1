"""Reliability of `kiln validate` against hostile specs: fuzzed / clean / tracebacks.

    .venv/bin/python bench/reliability/specs.py            # 10,000 fuzzed specs
    .venv/bin/python bench/reliability/specs.py -n 50000

The cases are those of tests/spec/test_fuzz.py (tests/spec/spec_fuzz.py: schema instances and
mutants of a valid spec), seeded 0..n-1 so any count printed here can be reproduced one by one
with `--seed`. Each runs through `api.validate` in-process, the code path of `kiln validate`.
"clean" is accepted, or refused with one well-formed `file:line:col: key: what` line per problem;
"malformed" a refusal that breaks that form; "tracebacks" any other exception.
"""
from __future__ import annotations

import argparse
import collections
import os
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "tests" / "spec"), str(REPO / "tests")]

from spec_fuzz import case, make_project, outcome  # noqa: E402


def run(count: int, first: int = 0, show: int = 5) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    examples: dict[str, int] = {}
    slowest = (0.0, -1)
    with tempfile.TemporaryDirectory() as tmp:
        spec = make_project(Path(tmp))
        os.chdir(tmp)
        for seed in range(first, first + count):
            spec.write_bytes(case(random.Random(seed)))
            start = time.perf_counter()
            try:
                counts[outcome(spec)] += 1
            except AssertionError as exc:
                counts["malformed"] += 1
                examples.setdefault(f"malformed: {str(exc)[:120]}", seed)
            except Exception as exc:  # what a user would have seen as a traceback
                counts["tracebacks"] += 1
                where = traceback.extract_tb(exc.__traceback__)[-1]
                examples.setdefault(f"{type(exc).__name__} at {Path(where.filename).name}:{where.lineno}", seed)
            slowest = max(slowest, (time.perf_counter() - start, seed))
    for what, seed in list(examples.items())[:show]:
        print(f"  seed {seed}: {what}")
    counts["slowest_ms"] = round(slowest[0] * 1000)
    counts["slowest_seed"] = slowest[1]
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10_000, help="number of fuzzed specs")
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    args = parser.parse_args()
    start = time.perf_counter()
    c = run(args.n, args.seed)
    clean = c["accepted"] + c["refused"]
    print(f"{'specs fuzzed':>14} {'clean':>7} {'accepted':>9} {'refused':>8} {'malformed':>10} "
          f"{'tracebacks':>11} {'slowest ms':>11}")
    print(f"{args.n:>14} {clean:>7} {c['accepted']:>9} {c['refused']:>8} {c['malformed']:>10} "
          f"{c['tracebacks']:>11} {c['slowest_ms']:>11}")
    print(f"({time.perf_counter() - start:.0f} s; slowest case: seed {c['slowest_seed']})")


if __name__ == "__main__":
    main()
