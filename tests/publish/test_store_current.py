"""Which version is `current` after publishes of different versions: the highest (PEP 440), always.

The racing test runs each publisher as its own process, released together, many rounds; before
the rule, `current` was whichever publish finished last (8.0.0 could beat 8.0.3).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from distfactory import make_dist
from modelkiln.publish.store import becomes_current, publish_to_store
from modelkiln.store import ModelStore

ROUNDS = 10
VERSIONS = ("8.0.0", "8.0.1", "8.0.2", "8.0.3")

WORKER = r"""
import json, sys
from modelkiln.errors import KilnError
from modelkiln.publish.store import publish_to_store
for line in sys.stdin:
    dist, root, version = line.split()
    try:
        publish_to_store(dist, root, "triage", version)
        print(json.dumps({"code": 0}), flush=True)
    except KilnError as exc:
        print(json.dumps({"code": exc.exit_code, "error": str(exc)}), flush=True)
"""


@pytest.mark.parametrize("new,current,wins", [
    ("1.0.0", None, True),
    ("8.0.1", "8.0.0", True),
    ("8.0.0", "8.0.3", False),
    ("1.10.0", "1.9.0", True),  # numeric, not string, order
    ("2.0.0", "2.0.0rc1", True),
    ("2.0.0rc1", "1.9.9", True),
    ("1.2.0", "1.2.0", False),  # the same version again does not re-point anything
    ("distilled-3f2a9c1", "1.0.0", True),  # no order to go by: the last to commit wins
    ("1.0.0", "distilled-3f2a9c1", True),
])
def test_the_rule(new: str, current: str | None, wins: bool) -> None:
    assert becomes_current(new, current) is wins


def test_a_lower_version_published_later_does_not_take_over(tmp_path: Path) -> None:
    root = tmp_path / "store"
    high, low = (make_dist(tmp_path, version=v, seed=i) for i, v in enumerate(("2.0.0", "1.5.0")))
    assert publish_to_store(high, root, "triage", "2.0.0").current
    late = publish_to_store(low, root, "triage", "1.5.0")
    assert not late.current and not late.noop
    assert ModelStore(root).current_version("triage") == "2.0.0"
    ModelStore(root).rollback("triage", "1.5.0")  # an operator's rollback is kept ...
    fix = make_dist(tmp_path, version="1.5.1", seed=7)
    assert publish_to_store(fix, root, "triage", "1.5.1").current  # ... until a newer one lands


def test_racing_publishers_of_different_versions_leave_the_highest_current(
        tmp_path: Path) -> None:
    dists = {v: make_dist(tmp_path, version=v, seed=i) for i, v in enumerate(VERSIONS)}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in VERSIONS]
    seen = []
    try:
        for r in range(ROUNDS):
            root = tmp_path / f"store-{r}"
            order = VERSIONS if r % 2 else tuple(reversed(VERSIONS))  # vary who starts first
            for proc, version in zip(procs, order, strict=True):
                assert proc.stdin is not None
                proc.stdin.write(f"{dists[version]} {root} {version}\n")
                proc.stdin.flush()
            for proc in procs:
                assert proc.stdout is not None
                assert json.loads(proc.stdout.readline()) == {"code": 0}
            seen.append(ModelStore(root).current_version("triage"))
    finally:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(30)
    assert seen == [max(VERSIONS)] * ROUNDS
