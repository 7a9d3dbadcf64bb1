"""Two checkouts standing in for two CI runners, sharing one action cache on a real SeaweedFS.

Runner A builds and writes the cache. Fresh checkouts (empty build/, empty .kiln/) then play the
next runners: one restores everything and runs no stage; one with a `thresholds.default` edit
runs thresholds and package only; one meets a corrupted and a truncated blob, warns, rebuilds
exactly those stages and still produces A's bytes; a read-only runner writes nothing; two writers
racing on one key leave one valid record per key.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from helpers import BIN, Project, Run, make_project

pytestmark = [pytest.mark.slow, pytest.mark.s3]

ALL = {"weights:tiny", "tokenizer:tiny", "labels:tiny", "thresholds:tiny", "package:tiny-pytorch"}


def doit(project: Project, cache: str, *args: str, write: bool = False) -> tuple[Run, set[str]]:
    """Run the real doit with the cache; (run, tasks restored from the cache)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "KILN_CACHE_URI": cache,
           "KILN_CACHE_WRITE": "1" if write else "0"}
    done = subprocess.run([str(BIN / "doit"), *args, "build:tiny"], cwd=project.root,
                          capture_output=True, text=True, timeout=600, env=env)
    out = done.stdout + done.stderr
    run = Run(done.returncode, out, set(re.findall(r"^\.  (\S+)", out, re.M)),
              set(re.findall(r"^-- (\S+)", out, re.M)))
    assert run.code == 0, out
    return run, set(re.findall(r"^(\S+): restored from cache", out, re.M))


def objects(s3: Any) -> dict[str, str]:
    """Every object under the test's prefix -> ETag."""
    out: dict[str, str] = {}
    for page in s3.client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket,
                                                                    Prefix=s3.prefix):
        out.update({o["Key"]: o["ETag"] for o in page.get("Contents", [])})
    return out


def tarball(project: Project) -> bytes:
    return (project.dist() / "bundle.tar.gz").read_bytes()


@pytest.fixture
def runner_a(tmp_path: Path, tiny_inputs: Path, s3: Any) -> Project:
    a = make_project(tmp_path / "A", tiny_inputs)
    run, restored = doit(a, s3.uri("cache"), write=True)
    assert run.executed == ALL and not restored
    return a


def test_fresh_runner_restores_everything_and_runs_no_stage(runner_a: Project, tmp_path: Path,
                                                            tiny_inputs: Path, s3: Any) -> None:
    b = make_project(tmp_path / "B", tiny_inputs)
    cache = s3.uri("cache")
    before = objects(s3)
    plan = b.kiln("plan", "--json", "--cache", cache)
    assert plan.returncode == 0, plan.stderr
    assert {r["task"]: r["action"] for r in json.loads(plan.stdout)} == dict.fromkeys(ALL, "hit")
    assert not (b.root / "build").exists()  # the plan knew from records alone
    run, restored = doit(b, cache)
    assert restored == ALL and run.executed == ALL  # doit ran each action: every one a restore
    assert tarball(b) == tarball(runner_a)
    assert objects(s3) == before  # a read-only runner wrote nothing
    again, restored = doit(b, cache)
    assert again.executed == set() and again.fresh == ALL  # restored stamps make a true no-op


def test_threshold_edit_runs_thresholds_and_package_only(runner_a: Project, tmp_path: Path,
                                                         tiny_inputs: Path, s3: Any) -> None:
    c = make_project(tmp_path / "C", tiny_inputs)
    c.edit("default: 0.5", "default: 0.45")
    cache = s3.uri("cache")
    before = objects(s3)
    plan = json.loads(c.kiln("plan", "--json", "--cache", cache).stdout)
    assert {r["task"] for r in plan if r["action"] == "run"} == {"thresholds:tiny",
                                                                 "package:tiny-pytorch"}
    run, restored = doit(c, cache)
    assert run.executed - restored == {"thresholds:tiny", "package:tiny-pytorch"}
    assert restored == {"weights:tiny", "tokenizer:tiny", "labels:tiny"}
    assert objects(s3) == before  # read-only: the edited outputs were not saved


def test_corrupt_and_truncated_blobs_are_rebuilt_with_the_same_bytes(
        runner_a: Project, tmp_path: Path, tiny_inputs: Path, s3: Any) -> None:
    stamps = runner_a.root / "build" / "tiny" / ".stamps"
    weights = json.loads((stamps / "weights.json").read_text())["outputs"]["model.safetensors"]
    labels = json.loads((stamps / "labels.json").read_text())["outputs"]["label_order.json"]
    key = f"{s3.prefix}cache/blobs/sha256/"
    good = s3.client.get_object(Bucket=s3.bucket, Key=key + weights)["Body"].read()
    flipped = good[:1000] + bytes([good[1000] ^ 0xFF]) + good[1001:]  # same size, other bytes
    s3.client.put_object(Bucket=s3.bucket, Key=key + weights, Body=flipped)
    short = s3.client.get_object(Bucket=s3.bucket, Key=key + labels)["Body"].read()[:-3]
    s3.client.put_object(Bucket=s3.bucket, Key=key + labels, Body=short)
    d = make_project(tmp_path / "D", tiny_inputs)
    run, restored = doit(d, s3.uri("cache"))
    assert run.executed - restored == {"weights:tiny", "labels:tiny"}, run.output
    assert restored == {"tokenizer:tiny", "thresholds:tiny", "package:tiny-pytorch"}
    assert run.output.count("is corrupt or missing") == 2
    assert tarball(d) == tarball(runner_a)


def test_two_writers_at_once_leave_one_valid_record_per_key(tmp_path: Path, tiny_inputs: Path,
                                                            s3: Any) -> None:
    cache = s3.uri("race")
    projects = [make_project(tmp_path / f"W{i}", tiny_inputs) for i in range(2)]
    errors: list[BaseException] = []

    def build(p: Project) -> None:
        try:
            doit(p, cache, write=True)
        except BaseException as exc:  # reported below, in the test's own thread
            errors.append(exc)

    threads = [threading.Thread(target=build, args=(p,)) for p in projects]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert tarball(projects[0]) == tarball(projects[1])
    records = {k: v for k, v in objects(s3).items() if "/race/ac/" in k}
    assert len(records) == len(ALL)
    fresh = make_project(tmp_path / "R", tiny_inputs)  # every record restores, verified
    _run, restored = doit(fresh, cache)
    assert restored == ALL and tarball(fresh) == tarball(projects[0])
