"""A bundle whose manifest declares more files than the host unpacks (KILN_EXTRACT_MAX_FILES) is
refused from the manifest: nothing downloaded, nothing written. Before, the archive was fetched
and extraction stopped at the limit, after writing and fsyncing that many files."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from distfactory import bundle_files, make_dist
from modelkiln import transport
from modelkiln.artifacts import manifest as mf
from modelkiln.artifacts.extract import UnsafeArchive
from modelkiln.artifacts.extract_limits import Limits
from modelkiln.artifacts.install import unpack_checked
from modelkiln.publish import publish_bundle
from modelkiln.runtime import bootstrap


def _many(tmp_path: Path, extra: int) -> tuple[Path, str]:
    """A real published bundle with `extra` small files beside the usual ones."""
    files = bundle_files("pytorch", 0, 1000)
    files.update({f"extra/{i:05d}.txt": b"x" for i in range(extra)})
    dist = make_dist(tmp_path, files=files)
    return dist, publish_bundle(dist, str(tmp_path / "bucket")).archive_uri


def _written(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*")
                  if p.is_file() and p.name != ".lock")


def test_bootstrap_refuses_from_the_manifest_before_downloading(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, uri = _many(tmp_path, 30)  # 38 files with manifest.json
    downloads: list[Any] = []
    monkeypatch.setattr(transport, "download", lambda *a, **k: downloads.append(a))
    runtime = tmp_path / "rt"
    env = {"MODEL_BACKEND": "pytorch", "MODEL_BUNDLE_S3_URI_PYTORCH": uri,
           "REGISTRY_RUNTIME_DIR": str(runtime), "KILN_EXTRACT_MAX_FILES": "20"}
    with pytest.raises(UnsafeArchive, match=r"declares 38 files, more than the 20 .*"
                                            r"KILN_EXTRACT_MAX_FILES"):
        bootstrap(env)
    assert downloads == []
    assert not (runtime / "pytorch" / "current").exists()
    assert _written(runtime) == []


def test_a_bundle_within_the_limit_still_installs(tmp_path: Path) -> None:
    _, uri = _many(tmp_path, 30)
    env = {"MODEL_BACKEND": "pytorch", "MODEL_BUNDLE_S3_URI_PYTORCH": uri,
           "REGISTRY_RUNTIME_DIR": str(tmp_path / "rt"), "KILN_EXTRACT_MAX_FILES": "60"}
    assert bootstrap(env).downloaded


def test_unpack_checked_refuses_before_writing(tmp_path: Path) -> None:
    dist, _ = _many(tmp_path, 30)
    published = mf.load_published(dist / mf.MANIFEST)
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchive, match="declares 38 files"):
        unpack_checked(dist / mf.ARCHIVE, dest, published, fix="rebuild",
                       limits=Limits(max_files=20))
    assert not dest.exists() or os.listdir(dest) == []
