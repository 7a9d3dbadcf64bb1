"""Concurrent writers, as separate processes released together by a barrier: distinct versions are
all kept, the same bytes published several times give one writer and no-ops, different bytes under
one version give exactly one winner and a ConflictError for every other writer."""
from __future__ import annotations

import multiprocessing
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

from distfactory import make_dist
from modelkiln.errors import ConflictError
from modelkiln.publish.store import publish_to_store
from modelkiln.store import ModelStore
from store.store_helpers import AGENT, debris

CTX = multiprocessing.get_context("fork")
Result = tuple[str, str, str, str | None]  # tag, version, outcome, archive sha256 / payload


def _publisher(barrier: Barrier, results: Queue[Result], tag: str, dist: Path, root: Path, version: str) -> None:
    barrier.wait()
    try:
        r = publish_to_store(dist, root, AGENT, version, {"tag": tag})
        results.put((tag, version, "noop" if r.noop else "ok", r.archive_sha256))
    except ConflictError:
        results.put((tag, version, "conflict", None))
    except BaseException:
        results.put((tag, version, "error: " + traceback.format_exc(), None))


def _raw_writer(barrier: Barrier, results: Queue[Result], tag: str, root: Path, payload: bytes) -> None:
    barrier.wait()
    try:
        store = ModelStore(root)
        with store.stage_new(AGENT, "raw") as tmp:
            (tmp / "weights.bin").write_bytes(payload)
        info = store.finalize(AGENT, "raw", {"tag": tag})
        results.put((tag, "raw", "noop" if info.noop else "ok", payload.decode()))
    except ConflictError:
        results.put((tag, "raw", "conflict", None))
    except BaseException:
        results.put((tag, "raw", "error: " + traceback.format_exc(), None))


def _run(jobs: Sequence[tuple[Callable[..., None], *tuple[object, ...]]]) -> list[Result]:
    barrier = CTX.Barrier(len(jobs))
    results: Queue[Result] = CTX.Queue()
    procs = [CTX.Process(target=fn, args=(barrier, results, *args)) for fn, *args in jobs]
    for p in procs:
        p.start()
    out = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    errors = [r for r in out if r[2].startswith("error")]
    assert not errors, errors[0][2]
    return out


def test_concurrent_publishers(tmp_path: Path) -> None:
    root = tmp_path / "store"
    distinct = [make_dist(tmp_path, version=f"1.0.{i}", seed=10 + i) for i in range(4)]
    same = make_dist(tmp_path, version="2.0.0", seed=20)
    clash = [make_dist(tmp_path, version="3.0.0", seed=30 + i) for i in range(2)]
    jobs = [(_publisher, f"d{i}", d, root, f"1.0.{i}") for i, d in enumerate(distinct)]
    jobs += [(_publisher, f"s{i}", same, root, "2.0.0") for i in range(3)]
    jobs += [(_publisher, f"c{i}", d, root, "3.0.0") for i, d in enumerate(clash)]
    out = _run(jobs)
    by_version: dict[str, list[str]] = {}
    for _tag, version, outcome, _sha in out:
        by_version.setdefault(version, []).append(outcome)
    for i in range(4):
        assert by_version[f"1.0.{i}"] == ["ok"]
    assert sorted(by_version["2.0.0"]) == ["noop", "noop", "ok"]
    assert sorted(by_version["3.0.0"]) == ["conflict", "ok"]
    winner = next(sha for _t, v, o, sha in out if v == "3.0.0" and o == "ok")
    store = ModelStore(root, strict=True)
    infos = store.list_versions(AGENT)
    assert {i.version for i in infos} == {"1.0.0", "1.0.1", "1.0.2", "1.0.3", "2.0.0", "3.0.0"}
    assert len({i.seq for i in infos}) == len(infos)  # finalizes were serialized
    for info in infos:
        store.verify(AGENT, info.version)
    won = next(i for i in infos if i.version == "3.0.0").bundle
    assert won is not None and won.archive_sha256 == winner
    assert store.current_version(AGENT) in {i.version for i in infos}
    assert debris(root / AGENT) == []


def test_concurrent_raw_finalizes_of_one_version(tmp_path: Path) -> None:
    root = tmp_path / "store"
    jobs = [(_raw_writer, f"w{i}", root, f"payload-{i}".encode()) for i in range(3)]
    jobs += [(_raw_writer, "w0-again", root, b"payload-0")]
    out = _run(jobs)
    outcomes = sorted(o for _t, _v, o, _p in out)
    winner = [p for _t, _v, o, p in out if o == "ok"]
    assert len(winner) == 1
    if winner[0] == "payload-0":  # the twin of the winner sees its own bytes: a no-op
        assert outcomes == ["conflict", "conflict", "noop", "ok"]
    else:
        assert outcomes == ["conflict", "conflict", "conflict", "ok"]
    assert (root / AGENT / "versions/raw/weights.bin").read_bytes().decode() == winner[0]
    ModelStore(root).verify(AGENT, "raw")
