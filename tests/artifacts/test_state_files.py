"""Files modelkiln keeps for itself, in process: a lock file that is not a regular file is refused
(never truncated through a symlink), doit's damaged database is set aside, and the state reader
never blocks on a FIFO or reads a device."""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from modelkiln.artifacts.lock import FileLock
from modelkiln.artifacts.statefile import load_json, read_regular
from modelkiln.errors import KilnError
from modelkiln.graph.depfile import usable


def test_a_lock_file_symlinked_elsewhere_is_refused_and_its_target_kept(tmp_path: Path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("do not truncate me")
    lock = tmp_path / "x.lock"
    lock.symlink_to(precious)
    with pytest.raises(KilnError, match="not a regular file"), FileLock(lock).held():
        pass
    assert precious.read_text() == "do not truncate me"


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_lock_file_that_is_not_a_file_is_one_clear_error(tmp_path: Path, kind: str) -> None:
    lock = tmp_path / "x.lock"
    os.mkfifo(lock) if kind == "fifo" else lock.mkdir()
    with pytest.raises(KilnError, match="remove it"):
        FileLock(lock, timeout=1).acquire()
    assert not FileLock(lock).is_held


def test_state_reader_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # a blocking read would wait for a writer for ever
    (tmp_path / "zero").symlink_to("/dev/zero")
    assert read_regular(fifo) is None and read_regular(tmp_path / "zero") is None
    assert read_regular(tmp_path) is None and read_regular(tmp_path / "absent") is None
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    assert load_json(deep) is None
    big = tmp_path / "big.json"
    big.write_text("[1]")
    assert load_json(big) == [1] and read_regular(big, limit=2) is None


def test_a_damaged_doit_database_is_set_aside(tmp_path: Path) -> None:
    db = tmp_path / "doit.sqlite3"
    db.write_bytes(b"\x00garbage" * 100)
    assert usable(db) == db and not db.exists()
    assert (tmp_path / "doit.sqlite3.corrupt").exists()
    sqlite3.connect(db).execute("create table t (x)").connection.commit()
    whole = db.read_bytes()
    assert usable(db) == db and db.read_bytes() == whole  # a sound one is left alone
    db.write_bytes(whole[: len(whole) // 2])  # a torn copy: shorter than its header says
    usable(db)
    assert not db.exists()


def test_a_doit_database_that_is_not_a_file_is_one_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "doit.sqlite3"
    db.mkdir()
    with pytest.raises(KilnError, match="remove it"):
        usable(db)
    assert db.is_dir()
