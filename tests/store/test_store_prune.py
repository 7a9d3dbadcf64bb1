"""`prune` keeps exactly what it must: the `keep` newest versions, the current one, pinned ones and
whatever the caller protects (the registry's entries), for any number of versions, including fewer
than `keep`."""
from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelkiln.store import ModelStore

AGENT = "triage"


def put(store: ModelStore, version: str, activate: bool = True) -> None:
    with store.stage_new(AGENT, version) as tmp:
        (tmp / "w.bin").write_bytes(version.encode())
    store.finalize(AGENT, version, activate=activate)


def test_fewer_versions_than_keep_removes_nothing(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    for v in ("1", "2", "3", "4"):
        put(store, v)
    assert store.prune(AGENT, keep=5) == []
    assert [i.version for i in store.list_versions(AGENT)] == ["1", "2", "3", "4"]


def test_two_versions_default_keep_then_rollback_still_works(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    put(store, "1.2.0")
    put(store, "1.2.1")
    assert store.prune(AGENT) == []
    assert store.rollback(AGENT).version == "1.2.0"


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, int, set[int], set[int], int]:
    n = draw(st.integers(1, 7))
    keep = draw(st.integers(0, 9))
    pins = draw(st.sets(st.integers(0, n - 1), max_size=n))
    locks = draw(st.sets(st.integers(0, n - 1), max_size=n))
    current = draw(st.integers(0, n - 1))
    return n, keep, pins, locks, current


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_prune_removes_exactly_the_unprotected_old_versions(
        case: tuple[int, int, set[int], set[int], int]) -> None:
    n, keep, pins, locks, current = case
    names = [f"{i}.0.0" for i in range(n)]
    with tempfile.TemporaryDirectory() as d:
        store = ModelStore(Path(d))
        for name in names:
            put(store, name)
        store.rollback(AGENT, names[current], verify=False)
        for i in pins:
            store.pin(AGENT, names[i], "test")
        removed = store.prune(AGENT, keep=keep, protect=lambda: {names[i] for i in locks})
        newest = set(names[max(0, n - keep):]) if keep else set()
        must_keep = newest | {names[i] for i in pins | locks} | {names[current]}
        assert sorted(removed) == sorted(set(names) - must_keep)
        left = [i.version for i in store.list_versions(AGENT)]
        assert left == [v for v in names if v in must_keep]
        assert store.current_version(AGENT) == names[current]
        for v in left:
            store.verify(AGENT, v)
