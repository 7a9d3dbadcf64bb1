"""Hostile OCI registries through the bootstrap and publish: one row each for the campaign.

Every case of tests/oci/hostile_registry.py (huge and endless manifests, error bodies and token
answers; a registry or token endpoint dripping a byte every 0.5 s; wrong JSON shapes and deep
nesting; malformed redirect, realm and upload URLs; clashing layer paths; a token realm on
another origin) runs in a child process against the stdlib server on loopback, with
REGISTRY_FETCH_TIMEOUT and KILN_OCI_TIMEOUT at 3 s. A case is a clean refusal (one `kiln:` line
that names the cause), an expected success, a wrong output (a success where a refusal is due, a
refusal blaming the wrong thing, `current` moved, credentials sent to another origin), a
traceback, or a hang (no answer in 10 s). Goal: 0 wrong outputs, 0 tracebacks, 0 hangs, peak
RSS under 256 MiB; a hang, a wrong output or an RSS over the goal is a violation.

    .venv/bin/python bench/reliability/hostile_oci.py [--quick]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import REPO, Row, report

sys.path.insert(0, str(REPO / "tests" / "oci"))
import hostile_registry as hr  # lives beside the tests that use it

HANG_S = 10.0
RSS_GOAL_MIB = 256.0


def run(quick: bool) -> list[Row]:
    """One row for the bootstrap, one for publish; each case once (quick) or three times."""
    rounds = 1 if quick else 3
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="kiln-hostile-oci-") as tmp:
        root = Path(tmp)
        for srv in hr.serve():
            env = hr.setup(srv, root)
            rows += [_row(srv, env, root, kind, rounds) for kind in ("bootstrap", "publish")]
    return rows


def _row(srv: hr.Hostile, env: dict[str, str], root: Path, kind: str, rounds: int) -> Row:
    row = Row(f"hostile OCI registry through {kind}")
    refused = succeeded = wrong = hangs = 0
    peak = 0.0
    for case in [c for c in hr.CASES if c.kind == kind] * rounds:
        got = hr.run_case(srv, case, env, root, timeout=HANG_S)
        row.trials += 1
        peak = max(peak, got.maxrss_mib)
        if got.outcome == "hang":
            hangs += 1
            row.violation(f"{case.name}: hang, no answer in {HANG_S:g} s")
        elif got.outcome == "traceback":
            row.crashed(f"{case.name}: {got.message.strip().splitlines()[-1][:160]}")
        elif got.wrong:
            wrong += 1
            row.violation(f"{case.name}: {got.wrong[:160]}")
        elif got.outcome == "refused":
            refused += 1
        else:
            succeeded += 1
    if peak >= RSS_GOAL_MIB:
        row.violation(f"peak RSS {peak:.0f} MiB, over the {RSS_GOAL_MIB:g} MiB goal")
    row.notes.insert(0, f"{row.trials} cases: {refused} clean refusals, {succeeded} expected "
                        f"successes, {wrong} wrong outputs, {row.tracebacks} tracebacks, {hangs} "
                        f"hangs (>{HANG_S:g} s); max RSS {peak:.0f} MiB")
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="each case once")
    args = parser.parse_args()
    rows = run(args.quick)
    return report(rows)


if __name__ == "__main__":
    sys.exit(main())
