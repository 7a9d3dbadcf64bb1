"""Publishing to a local directory (file:// and plain paths): order, immutability, convergence."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from distfactory import make_dist
from modelkiln.artifacts import manifest as mf
from modelkiln.errors import ConflictError, KilnError, PublishError
from modelkiln.publish import DistBundle, protocol, publish_bundle, render_destination
from modelkiln.transport import IF_ABSENT, LocalDir


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_render_destination() -> None:
    assert render_destination("s3://b/deploy/registry/{version}/{backend}", name="r",
                              version="3.0.0", backend="onnx") \
        == "s3://b/deploy/registry/3.0.0/onnx/"
    assert render_destination("/srv/{name}/{version}/{backend}/", name="r", version="1",
                              backend="pytorch") == "/srv/r/1/pytorch/"
    with pytest.raises(KilnError, match=r"unknown placeholder \{verison\}"):
        render_destination("s3://b/{verison}/", name="r", version="1", backend="onnx")


@pytest.mark.parametrize("as_uri", [True, False])
def test_publish_writes_the_layout_tarball_then_manifest(tmp_path: Path, as_uri: bool) -> None:
    dist = make_dist(tmp_path)
    dest = tmp_path / "registry" / "3.0.0" / "pytorch"
    seen: list[int] = []
    result = publish_bundle(dist, dest.as_uri() + "/" if as_uri else str(dest),
                            progress=seen.append)
    assert _files(dest) == _files(dist)
    assert result.uploaded == (mf.ARCHIVE, mf.MANIFEST)
    assert result.archive_uri == dest.as_uri() + "/" + mf.ARCHIVE
    assert not result.unchanged and not result.forced
    assert sum(seen) == result.bytes_uploaded == sum(len(b) for b in _files(dist).values())
    # Tarball before manifest: the commit point is the newer of the two.
    assert (dest / mf.ARCHIVE).stat().st_mtime_ns <= (dest / mf.MANIFEST).stat().st_mtime_ns


def test_same_bytes_again_writes_nothing(tmp_path: Path) -> None:
    dist, dest = make_dist(tmp_path), tmp_path / "pub"
    publish_bundle(dist, str(dest))
    before = {n: os.stat(dest / n) for n in (mf.ARCHIVE, mf.MANIFEST)}
    result = publish_bundle(dist, str(dest))
    assert result.unchanged and result.uploaded == () and result.bytes_uploaded == 0
    for name, st in before.items():
        now = os.stat(dest / name)
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)


def test_different_bytes_conflict_and_force_replaces(tmp_path: Path) -> None:
    first, second = make_dist(tmp_path, seed=1), make_dist(tmp_path, seed=2)
    dest = tmp_path / "pub"
    publish_bundle(first, str(dest))
    old = _files(dest)
    with pytest.raises(ConflictError) as err:
        publish_bundle(second, str(dest))
    assert err.value.exit_code == 5
    assert err.value.existing == mf.load_published(first / mf.MANIFEST)["archive"]["sha256"]
    assert err.value.new == mf.load_published(second / mf.MANIFEST)["archive"]["sha256"]
    assert _files(dest) == old
    result = publish_bundle(second, str(dest), force=True)
    assert result.forced and result.replaced == err.value.existing
    assert _files(dest) == _files(second)


def test_killed_after_tarball_converges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dist, dest = make_dist(tmp_path), tmp_path / "pub"

    def killed(*a: object, **k: object) -> None:
        raise KeyboardInterrupt  # the process dies between the two writes

    with monkeypatch.context() as m:
        m.setattr(protocol, "_commit", killed)
        with pytest.raises(KeyboardInterrupt):
            publish_bundle(dist, str(dest))
    # No manifest: not published; the claim stays, so only these bytes can finish the version.
    assert sorted(p.name for p in dest.iterdir()) == [protocol.CLAIM, mf.ARCHIVE]
    result = publish_bundle(dist, str(dest))
    assert result.skipped == (mf.ARCHIVE,) and result.uploaded == (mf.MANIFEST,)
    assert _files(dest) == _files(dist)  # the claim is released after the commit


def test_leftover_tarball_of_other_bytes_is_replaced(tmp_path: Path) -> None:
    dist, dest = make_dist(tmp_path), tmp_path / "pub"
    dest.mkdir()
    (dest / mf.ARCHIVE).write_bytes(b"half an upload")
    result = publish_bundle(dist, str(dest))
    assert result.uploaded == (mf.ARCHIVE, mf.MANIFEST) and not result.forced
    assert _files(dest) == _files(dist)


def test_damaged_tarball_under_same_manifest_is_repaired(tmp_path: Path) -> None:
    dist, dest = make_dist(tmp_path), tmp_path / "pub"
    publish_bundle(dist, str(dest))
    (dest / mf.ARCHIVE).write_bytes(b"rot")
    result = publish_bundle(dist, str(dest))
    assert result.uploaded == (mf.ARCHIVE,) and not result.unchanged
    assert _files(dest) == _files(dist)


def test_racing_publisher_loses_at_the_commit_point(tmp_path: Path) -> None:
    first, second = make_dist(tmp_path, seed=1), make_dist(tmp_path, seed=2)
    dest = tmp_path / "pub"
    run = protocol._Run(LocalDir(dest), DistBundle.load(second), None)
    # Another publisher commits between our check and our write: os.link refuses to replace it.
    dest.mkdir()
    (dest / mf.MANIFEST).write_bytes((first / mf.MANIFEST).read_bytes())
    with pytest.raises(ConflictError):
        protocol._commit(run, IF_ABSENT)
    assert (dest / mf.MANIFEST).read_bytes() == (first / mf.MANIFEST).read_bytes()
    assert [p.name for p in dest.iterdir()] == [mf.MANIFEST]  # no temp file left behind


def test_a_claim_of_other_bytes_refuses_without_writing(tmp_path: Path) -> None:
    first, second = make_dist(tmp_path, seed=1), make_dist(tmp_path, seed=2)
    dest = tmp_path / "pub"
    claim = protocol._claim_bytes(DistBundle.load(first))
    LocalDir(dest).put_bytes(protocol.CLAIM, claim)  # a publisher of `first` is at work
    with pytest.raises(protocol.VersionClaimed) as err:
        publish_bundle(second, str(dest))
    assert err.value.exit_code == 5 and "--force" in str(err.value)
    assert _files(dest) == {protocol.CLAIM: claim}
    assert publish_bundle(first, str(dest)).uploaded == (mf.ARCHIVE, mf.MANIFEST)
    assert _files(dest) == _files(first)
    forced = publish_bundle(second, str(dest), force=True)
    assert forced.forced and _files(dest) == _files(second)


def test_claim_left_after_the_commit_is_dropped_by_a_rerun(tmp_path: Path) -> None:
    dist, dest = make_dist(tmp_path), tmp_path / "pub"
    publish_bundle(dist, str(dest))
    LocalDir(dest).put_bytes(protocol.CLAIM, protocol._claim_bytes(DistBundle.load(dist)))
    assert publish_bundle(dist, str(dest)).unchanged
    assert _files(dest) == _files(dist)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_published_files_get_ordinary_permissions(tmp_path: Path, mask: int) -> None:
    dist, dest = make_dist(tmp_path), tmp_path / "pub"
    old = os.umask(mask)
    try:
        publish_bundle(dist, str(dest))
    finally:
        os.umask(old)
    for name in (mf.ARCHIVE, mf.MANIFEST):
        assert (dest / name).stat().st_mode & 0o777 == 0o666 & ~mask


def test_damaged_dist_directory_is_refused(tmp_path: Path) -> None:
    dist = make_dist(tmp_path)
    with open(dist / mf.ARCHIVE, "ab") as f:
        f.write(b"\0")
    with pytest.raises(PublishError, match="rebuild"):
        publish_bundle(dist, str(tmp_path / "pub"))
    assert not (tmp_path / "pub").exists()


def test_unsupported_scheme(tmp_path: Path) -> None:
    with pytest.raises(KilnError, match="unsupported"):
        publish_bundle(make_dist(tmp_path), "ftp://host/x/")
