"""Every hostile archive in the corpus, through the real `kiln bootstrap`: one clean refusal each.

Each case is published under a file:// prefix with a manifest that matches it (so the extractor,
not the digest check, is what refuses it), after a good version was installed. The bounds the
bootstrap must keep: exit 1 with exactly one `kiln:` line naming the reason, no traceback, at
most 2 s of CPU and 64 MiB of peak RSS (this child's own, from wait4), `current` unchanged, and
nothing anywhere under the test's directory changed (a canary directory beside the sandbox
included). CPU seconds rather than wall seconds are bounded so that load on a shared machine
cannot fail the test; a process still running after WALL_LIMIT seconds is killed and counts as
a hang.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from hostile_archives import Case, run_command, try_case
from hostile_corpus import ACCEPTED, HOSTILE

CPU_LIMIT_S = 2.0
RSS_LIMIT_MIB = 64
WALL_LIMIT = 10.0


def test_the_corpus_is_large_and_named_once() -> None:
    names = [c.name for c in HOSTILE + ACCEPTED]
    assert len(HOSTILE) >= 60 and len(set(names)) == len(names)


@pytest.mark.parametrize("case", HOSTILE, ids=lambda c: c.name)
def test_hostile_archive_is_refused_cleanly(tmp_path: Path, case: Case) -> None:
    trial = try_case(case, tmp_path, WALL_LIMIT)
    out = trial.outcome
    assert not out.hung, f"still running after {WALL_LIMIT} s"
    assert out.clean_refusal, f"exit {out.returncode}, stderr:\n{out.stderr}"
    assert case.expect in out.stderr
    assert out.cpu_seconds < CPU_LIMIT_S, out.cpu_seconds
    assert out.max_rss_mib < RSS_LIMIT_MIB, out.max_rss_mib
    assert trial.current_after == trial.current_before
    assert trial.changed == []  # nothing outside the sandbox, nothing left inside it
    assert os.listdir(tmp_path / "outside") == []


@pytest.mark.parametrize("case", ACCEPTED, ids=lambda c: c.name)
def test_odd_but_valid_archive_is_accepted(tmp_path: Path, case: Case) -> None:
    trial = try_case(case, tmp_path, WALL_LIMIT)
    out = trial.outcome
    assert out.returncode == 0, out.stderr
    assert "export REGISTRY_MODEL_VERSION=9.0.0" in out.stdout
    assert trial.current_after != trial.current_before
    assert trial.current_after is not None and trial.current_after.startswith("versions/9.0.0-")


def test_the_harness_sees_memory_hangs_and_only_the_child(tmp_path: Path) -> None:
    """The bounds above are only worth what the measurement is: check it on known processes."""
    env = dict(os.environ)
    big = run_command([sys.executable, "-c", "b = bytearray(100 << 20); b[::4096] = b'x' * 25600"],
                      env, tmp_path, WALL_LIMIT)
    assert big.returncode == 0 and not big.hung and big.max_rss_mib > 100
    small = run_command(["/bin/true"], env, tmp_path, WALL_LIMIT)
    assert small.max_rss_mib < 16  # not the test process's own memory
    hang = run_command(["/bin/sleep", "30"], env, tmp_path, 0.5)
    assert hang.hung and hang.returncode == -9
