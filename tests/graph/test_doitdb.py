"""doit's database backend for modelkiln projects: `remove(task)` drops the task's stamp only when
doit is forgetting or cleaning (doit also calls it for every task that failed or whose upstream
failed, and those stamps must stay for the early cutoff)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from doit.dependency import JSONCodec

from modelkiln.graph import clean
from modelkiln.graph.doitdb import StampDB


@pytest.fixture
def stamp(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "build" / "b" / ".stamps" / "labels.json"
    path.parent.mkdir(parents=True)
    path.write_text("{}")
    clean.KNOWN["labels:b"] = (path, tmp_path / ".kiln")
    yield path
    clean.KNOWN.pop("labels:b", None)
    clean.FORGETTING["on"] = False


def test_a_failure_keeps_the_stamp_forget_drops_it(tmp_path: Path, stamp: Path) -> None:
    db = StampDB(str(tmp_path / "doit.sqlite3"), JSONCodec())
    db.remove("labels:b")  # what doit's runner does for a failed task (or a failed upstream)
    assert stamp.exists()
    clean.FORGETTING["on"] = True  # `doit forget` / `doit clean`
    db.remove("other:b")  # a task modelkiln does not know: doit's own bookkeeping only
    assert stamp.exists()
    db.remove("labels:b")
    assert not stamp.exists()


def test_forget_all_drops_every_known_stamp(tmp_path: Path, stamp: Path) -> None:
    StampDB(str(tmp_path / "doit.sqlite3"), JSONCodec()).remove_all()
    assert not stamp.exists()


@pytest.mark.parametrize("argv,command", [
    (["forget", "labels:b"], "forget"), (["clean"], "clean"), (["-a", "labels:b"], "run"),
    ([], "run"), (["build:b", "skip=onnx"], "run"), (["list", "--all"], "list"),
])
def test_doit_command(argv: list[str], command: str) -> None:
    assert clean.doit_command(argv) == command
