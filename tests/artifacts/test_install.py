"""unpack_checked: the one verified unpacking the bootstrap and the store share."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from distfactory import make_dist
from modelkiln.artifacts import manifest as mf
from modelkiln.artifacts.install import BundleMismatch, unpack_checked
from modelkiln.errors import PublishError


def _published(dist: Path) -> mf.PublishedManifest:
    return mf.load_published(dist / mf.MANIFEST)


def test_unpacks_exactly_the_listed_files(tmp_path: Path) -> None:
    dist = make_dist(tmp_path)
    published = _published(dist)
    files = unpack_checked(dist / mf.ARCHIVE, tmp_path / "out", published, fix="rebuild")
    assert files == sorted([f["path"] for f in published["files"]] + [mf.MANIFEST])
    assert mf.load(tmp_path / "out" / mf.MANIFEST) == mf.without_archive(published)


def test_a_file_whose_sha256_differs_is_a_mismatch(tmp_path: Path) -> None:
    dist = make_dist(tmp_path)
    published = _published(dist)
    published["files"][0]["sha256"] = "0" * 64
    with pytest.raises(BundleMismatch, match=r"differs from the published manifest.*rebuild it"):
        unpack_checked(dist / mf.ARCHIVE, tmp_path / "out", published, fix="rebuild it")
    assert list((tmp_path / "out").iterdir()) == []


def test_an_inner_manifest_that_differs_is_a_mismatch(tmp_path: Path) -> None:
    dist = make_dist(tmp_path)
    published = json.loads((dist / mf.MANIFEST).read_bytes())
    published["metadata"] = {"owner": "someone else"}  # every file's digest still right
    with pytest.raises(PublishError, match=r"inside the bundle differs.*re-publish"):
        unpack_checked(dist / mf.ARCHIVE, tmp_path / "out", published, fix="re-publish")
