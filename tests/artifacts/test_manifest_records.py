"""The bundle manifest's typed records: one writer (`dumps`), one reader per form, and the
published manifest's `archive` entry checked in one place (`loads_published`)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelkiln.artifacts import manifest as mf
from modelkiln.errors import KilnError, PublishError

SHA = "ab" * 32

_entries = st.lists(
    st.builds(lambda p, n, d: {"path": p, "size": n, "sha256": d},
              st.text("abc/._", min_size=1, max_size=12), st.integers(0, 2**40),
              st.text("0123456789abcdef", min_size=64, max_size=64)),
    max_size=5, unique_by=lambda e: e["path"])


def _manifest(files: list[mf.FileEntry] | None = None) -> mf.BundleManifest:
    return mf.build(name="m", version="1", backend="pytorch", files=files or [],
                    inputs={"b": "2", "a": "1"}, spec_digest="s", tools={"torch": "2"})


@given(files=_entries, size=st.integers(0, 2**40))
def test_both_forms_round_trip_through_the_one_writer(files: list[mf.FileEntry], size: int) -> None:
    inner = _manifest(files)
    published = mf.with_archive(inner, size, SHA)
    assert mf.loads(mf.dumps(inner), "inner") == inner
    assert mf.loads_published(mf.dumps(published), "pub") == published
    assert mf.without_archive(published) == inner
    assert mf.dumps(mf.with_archive(inner, size, SHA)) == mf.dumps(published)  # stable bytes


@pytest.mark.parametrize("archive", [
    None,
    {"path": mf.ARCHIVE, "size": 1},
    {"path": mf.ARCHIVE, "size": 1, "sha256": "not-hex"},
    {"path": mf.ARCHIVE, "size": True, "sha256": SHA},
    {"path": mf.ARCHIVE, "size": -1, "sha256": SHA},
    {"path": "other.tar.gz", "size": 1, "sha256": SHA},
    "bundle.tar.gz",
])
def test_published_reader_refuses_a_bad_archive_entry(tmp_path: Path, archive: object) -> None:
    data = dict(_manifest())
    if archive is not None:
        data["archive"] = archive
    path = tmp_path / mf.MANIFEST
    path.write_text(json.dumps(data))
    with pytest.raises(PublishError, match=rf"{path}: no valid 'archive' entry.*kiln build"):
        mf.load_published(path)
    if archive is None:
        assert mf.load(path) == data  # a fine bundle manifest, just not a published one


@pytest.mark.parametrize("change,match", [
    ({"schema_version": 2}, "not a modelkiln manifest"),
    ({"files": [{"path": "a", "size": "1", "sha256": SHA}]}, "malformed 'files'"),
    ({"name": ""}, "missing 'name'"),
    ({"backend": None}, "missing 'backend'"),
])
def test_reader_names_the_file_and_the_fix(change: dict[str, object], match: str) -> None:
    data = {**_manifest(), **change}
    with pytest.raises(KilnError, match=rf"^dist/x/manifest.json: {match}.*re-publish"):
        mf.loads(json.dumps(data).encode(), "dist/x/manifest.json")


def test_unreadable_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(KilnError, match=rf"{tmp_path / 'nope.json'}: cannot read manifest"):
        mf.load_published(tmp_path / "nope.json")
