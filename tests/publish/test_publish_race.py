"""Racing publishers of different bytes under one version, as separate processes, many rounds.

Each publisher is a real process (the same `publish_bundle` that `kiln publish` calls) that waits
on its stdin; a round hands every one of them the same fresh destination at once. Afterwards the
published pair must belong together (the tarball's bytes are what the manifest's `archive` names),
exactly one publisher must have exited 0 having written it, every other one 5 (ConflictError),
and no claim may be left behind. On S3 half the rounds start from an uncommitted leftover tarball,
which every racer would otherwise try to replace with `If-Match` on the same ETag.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from distfactory import make_dist
from modelkiln.artifacts import manifest as mf
from modelkiln.publish import protocol

PUBLISHERS = 4
ROUNDS_FILE = 20
ROUNDS_S3 = 12

WORKER = r"""
import json, sys, traceback
from modelkiln.errors import KilnError
from modelkiln.publish import publish_bundle
for line in sys.stdin:
    dist, dest = line.split()
    try:
        result = publish_bundle(dist, dest)
        out = {"code": 0, "changed": not result.unchanged}
    except KilnError as exc:
        out = {"code": exc.exit_code, "error": str(exc)}
    except BaseException:
        out = {"code": 99, "error": traceback.format_exc()}
    print(json.dumps(out), flush=True)
"""


class Racers:
    """PUBLISHERS worker processes, each publishing its own dist directory when told where."""

    def __init__(self, dists: list[Path]):
        self.dists = dists
        self.procs = [subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True) for _ in dists]

    def race(self, dest: str) -> list[dict[str, Any]]:
        for proc, dist in zip(self.procs, self.dists, strict=True):  # every worker is blocked on readline
            assert proc.stdin is not None
            proc.stdin.write(f"{dist} {dest}\n")
            proc.stdin.flush()
        outs = []
        for proc in self.procs:
            assert proc.stdout is not None
            outs.append(json.loads(proc.stdout.readline()))
        return outs

    def close(self) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(30)


def _check_round(outs: list[dict[str, Any]], tarball: bytes, manifest: bytes,
                 claim_left: bool) -> list[str]:
    """Every way this round broke the rule, as readable lines (empty: it held)."""
    problems = []
    archive = json.loads(manifest)["archive"]
    if hashlib.sha256(tarball).hexdigest() != archive["sha256"] or len(tarball) != archive["size"]:
        problems.append("bundle.tar.gz is not the tarball manifest.json names")
    codes = sorted(o["code"] for o in outs)
    if codes != [0] + [5] * (len(outs) - 1):
        problems.append(f"exit codes {codes}: {[o.get('error', '')[:300] for o in outs]}")
    if not any(o["code"] == 0 and o["changed"] for o in outs):
        problems.append("no publisher reported writing the version")
    if claim_left:
        problems.append("a claim was left behind")
    return problems


@pytest.fixture
def dists(tmp_path: Path) -> list[Path]:
    """PUBLISHERS bundles of one name/version/backend that differ only in their bytes."""
    return [make_dist(tmp_path, seed=i, weights=300_000) for i in range(PUBLISHERS)]


def test_racing_publishers_to_a_directory(tmp_path: Path, dists: list[Path]) -> None:
    racers = Racers(dists)
    failures = []
    try:
        for r in range(ROUNDS_FILE):
            dest = tmp_path / "pub" / f"round-{r}"
            outs = racers.race(dest.as_uri() + "/")
            problems = _check_round(outs, (dest / mf.ARCHIVE).read_bytes(),
                                    (dest / mf.MANIFEST).read_bytes(),
                                    (dest / protocol.CLAIM).exists())
            failures += [f"round {r}: {p}" for p in problems]
    finally:
        racers.close()
    assert not failures, "\n".join(failures)


@pytest.mark.s3
def test_racing_publishers_to_s3(s3: Any, dists: list[Path]) -> None:
    racers = Racers(dists)
    failures = []

    def get(key: str) -> bytes:
        data: bytes = s3.client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
        return data

    try:
        for r in range(ROUNDS_S3):
            prefix = f"{s3.prefix}round-{r}/"
            if r % 2:  # an uncommitted leftover every racer sees, with one ETag
                s3.client.put_object(Bucket=s3.bucket, Key=prefix + mf.ARCHIVE,
                                     Body=b"a killed publisher's tarball")
            outs = racers.race(f"s3://{s3.bucket}/{prefix}")
            listed = s3.client.list_objects_v2(Bucket=s3.bucket, Prefix=prefix)
            keys = {o["Key"][len(prefix):] for o in listed.get("Contents", [])}
            problems = _check_round(outs, get(prefix + mf.ARCHIVE), get(prefix + mf.MANIFEST),
                                    protocol.CLAIM in keys)
            failures += [f"round {r}: {p}" for p in problems]
    finally:
        racers.close()
    assert not failures, "\n".join(failures)


def test_a_killed_claim_holder_is_finished_by_its_rerun(tmp_path: Path,
                                                        dists: list[Path]) -> None:
    """A publisher SIGKILLed after claiming: the others are refused, a re-run of it finishes."""
    dest = tmp_path / "pub"
    code = ("import os, signal, sys; from modelkiln.publish import protocol, publish_bundle\n"
            "real = protocol._commit\n"
            "def die(*a, **k): os.kill(os.getpid(), signal.SIGKILL)\n"
            "protocol._commit = die\n"
            "publish_bundle(sys.argv[1], sys.argv[2])\n")
    killed = subprocess.run([sys.executable, "-c", code, str(dists[0]), str(dest)], check=False)
    assert killed.returncode == -9 and not (dest / mf.MANIFEST).exists()
    racers = Racers(dists[1:])
    try:
        outs = racers.race(str(dest))
    finally:
        racers.close()
    assert [o["code"] for o in outs] == [5] * len(outs)
    assert all("being published" in o["error"] for o in outs)
    env = {**os.environ}
    rerun = subprocess.run([sys.executable, "-c", WORKER], input=f"{dists[0]} {dest}\n",
                           capture_output=True, text=True, env=env, check=True)
    assert json.loads(rerun.stdout) == {"code": 0, "changed": True}
    assert (dest / mf.ARCHIVE).read_bytes() == (dists[0] / mf.ARCHIVE).read_bytes()
    assert sorted(p.name for p in dest.iterdir()) == [mf.ARCHIVE, mf.MANIFEST]
