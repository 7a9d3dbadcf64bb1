"""Digests the store is handed instead of re-reading: the trust rule for `finalize(known=...)`
(stat key unchanged and well-formed, a wrong one caught by verify) and publish_to_store reading no
unpacked file back."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from modelkiln.artifacts import digest
from modelkiln.errors import DriftError
from modelkiln.store import ModelStore, read_manifest, stat_key


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path read through `digest.sha256_file` (the store's only way to hash a file)."""
    seen: list[str] = []
    real = digest.sha256_file

    def counting(path: str | os.PathLike[str], progress: object = None) -> str:
        seen.append(os.path.abspath(path))
        return real(path)

    monkeypatch.setattr(digest, "sha256_file", counting)
    return seen


def test_supplied_digests_trust_rule(tmp_path: Path, reads: list[str]) -> None:
    """Stale stat key or malformed digest: re-read. Well-formed but wrong for an untouched file:
    recorded as given (finalize cannot know without reading), then caught by verify."""
    store = ModelStore(tmp_path / "s")
    with store.stage_new("scout", "1") as tmp:
        for name in ("stale", "malformed", "wrong", "right"):
            (tmp / name).write_bytes(name.encode() * 1000)
        key = {n: stat_key(os.stat(tmp / n)) for n in ("stale", "malformed", "wrong", "right")}
        (tmp / "stale").write_bytes(b"rewritten, another size")
    real = {n: digest.sha256_file(tmp / n) for n in ("malformed", "wrong", "right")}
    reads.clear()
    known = {"stale": (key["stale"], "0" * 64), "malformed": (key["malformed"], real["malformed"].upper()),
             "wrong": (key["wrong"], "f" * 64), "right": (key["right"], real["right"])}
    info = store.finalize("scout", "1", known=known)
    assert sorted(Path(p).name for p in reads) == ["malformed", "stale"]
    files = read_manifest(info.path).files
    assert files["malformed"][1] == real["malformed"] and files["right"][1] == real["right"]
    assert files["stale"][1] == hashlib.sha256(b"rewritten, another size").hexdigest()
    assert files["wrong"][1] == "f" * 64
    with pytest.raises(DriftError) as err:
        store.verify("scout", "1")
    assert [(c.path, c.kind) for c in err.value.changes] == [("wrong", "changed")]



def test_publish_to_store_reads_no_unpacked_file_back(tmp_path: Path, reads: list[str]) -> None:
    """safe_extract hashes each file as it writes it and checks it against the bundle manifest;
    those digests go to finalize, which reads back only the bundle's own small manifest.json."""
    from distfactory import make_dist
    from modelkiln.publish.store import publish_to_store

    dist = make_dist(tmp_path, version="1", seed=1, weights=300_000)
    result = publish_to_store(dist, tmp_path / "s", "registry", "1", {})
    staged = [p for p in reads if "/versions/1.tmp/" in p]
    assert [p.split("/versions/1.tmp/")[1] for p in staged] == ["bundle/manifest.json"]
    assert len(read_manifest(result.path).files) >= 3
    reads.clear()
    ModelStore(tmp_path / "s").verify("registry", "1")  # the recorded digests are the real ones
    assert len(reads) == len(read_manifest(result.path).files)

