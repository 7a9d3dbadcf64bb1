"""The runtime bootstrap from file:// and s3://: resolve, cache, swap, refuse the unverified."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from distfactory import make_dist
from helpers import member_bytes
from modelkiln import transport
from modelkiln.artifacts import manifest as mf
from modelkiln.artifacts.extract import UnsafeArchive
from modelkiln.errors import KilnError, PublishError
from modelkiln.publish import publish_bundle
from modelkiln.runtime import bootstrap


def _env(uri: str, runtime: Path, backend: str = "pytorch", **extra: str) -> dict[str, str]:
    return {"MODEL_BACKEND": backend, f"MODEL_BUNDLE_S3_URI_{backend.upper()}": uri,
            "REGISTRY_RUNTIME_DIR": str(runtime), **extra}


def _published(tmp_path: Path, version: str = "3.0.0", backend: str = "pytorch",
               seed: int = 0) -> tuple[Path, str]:
    """Publish a bundle into a local 'bucket'; return (dist dir, the bundle.tar.gz URI)."""
    dist = make_dist(tmp_path, version=version, backend=backend, seed=seed)
    result = publish_bundle(dist, str(tmp_path / "bucket" / version / backend))
    return dist, result.archive_uri


def _current(runtime: Path, backend: str = "pytorch") -> str:
    return os.readlink(runtime / backend / "current")


def test_bootstrap_resolves_every_path(tmp_path: Path) -> None:
    dist, uri = _published(tmp_path)
    rt = bootstrap(_env(uri, tmp_path / "rt"))
    assert rt.downloaded and rt.backend == "pytorch" and rt.version == "3.0.0"
    versions = tmp_path / "rt" / "pytorch" / "versions"
    assert rt.directory == versions / f"3.0.0-{rt.archive_sha256[:12]}"
    assert _current(tmp_path / "rt") == f"versions/{rt.directory.name}"
    ex = rt.exports()
    assert ex["MODEL_BACKEND"] == "pytorch" and ex["REGISTRY_MODEL_VERSION"] == "3.0.0"
    assert Path(ex["REGISTRY_MODEL_DIR"], "config.json").is_file()
    assert Path(ex["REGISTRY_TOKENIZER_PATH"], "tokenizer.json").is_file()
    assert Path(ex["REGISTRY_THRESHOLDS_PATH"]).name == "thresholds.json"
    assert Path(ex["REGISTRY_LABEL_FIELDS_PATH"]).name == "registry_label_fields.json"
    assert mf.compare_tree(rt.directory, mf.load(dist / mf.MANIFEST)) == []
    report = rt.as_json()
    assert report["model_backend"] == "pytorch" and report["model_version"] == "3.0.0"


def test_onnx_bundle_resolves_the_onnx_model(tmp_path: Path) -> None:
    _, uri = _published(tmp_path, backend="onnx")
    rt = bootstrap(_env(uri, tmp_path / "rt", backend="onnx"))
    assert Path(rt.paths["REGISTRY_ONNX_MODEL_PATH"]).name == "registry_model_int8.onnx"
    assert Path(rt.paths["REGISTRY_ONNX_MODEL_PATH"]).is_file()


def test_second_start_downloads_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, uri = _published(tmp_path)
    env = _env(uri, tmp_path / "rt")
    first = bootstrap(env)

    def no_download(*a: Any, **k: Any) -> None:
        raise AssertionError("a cached start must not download the bundle")
    monkeypatch.setattr(transport, "download", no_download)
    again = bootstrap(env)
    assert not again.downloaded and again.directory == first.directory
    assert again.exports() == first.exports()


def test_tampered_cache_is_noticed_and_reinstalled(tmp_path: Path) -> None:
    _, uri = _published(tmp_path)
    env = _env(uri, tmp_path / "rt")
    rt = bootstrap(env)
    (rt.directory / "thresholds.json").write_text('{"a": 0.0}')  # edited by hand
    again = bootstrap(env)
    assert again.downloaded
    assert json.loads((again.directory / "thresholds.json").read_text()) == {"a": 0.5, "b": 0.25}


def test_full_verify_catches_what_stat_cannot(tmp_path: Path) -> None:
    _, uri = _published(tmp_path)
    env = _env(uri, tmp_path / "rt")
    rt = bootstrap(env)
    weights = rt.directory / "model.safetensors"
    st = weights.stat()
    with open(weights, "r+b") as f:  # bit rot: same size, mtime put back
        f.seek(100)
        f.write(b"\xff\xff")
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert not bootstrap(env).downloaded  # the documented limit of the cheap check
    assert bootstrap({**env, "REGISTRY_VERIFY": "full"}).downloaded
    assert not bootstrap({**env, "REGISTRY_VERIFY": "full"}).downloaded


def test_new_version_swaps_current_and_keeps_one_previous(tmp_path: Path) -> None:
    runtime = tmp_path / "rt"
    dirs = []
    for i, version in enumerate(["1.0.0", "2.0.0", "3.0.0"]):
        _, uri = _published(tmp_path, version=version, seed=i)
        dirs.append(bootstrap(_env(uri, runtime)).directory)
        assert _current(runtime) == f"versions/{dirs[-1].name}"
    kept = sorted(p.name for p in (runtime / "pytorch" / "versions").iterdir()
                  if not p.name.endswith(".json"))
    assert kept == sorted([dirs[1].name, dirs[2].name])


def test_corrupt_object_is_refused_and_previous_stays_current(tmp_path: Path) -> None:
    runtime = tmp_path / "rt"
    _, old_uri = _published(tmp_path, version="1.0.0", seed=1)
    old = bootstrap(_env(old_uri, runtime))
    _, uri = _published(tmp_path, version="2.0.0", seed=2)
    path = transport.local_path(uri)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(PublishError, match="corrupt or was replaced"):
        bootstrap(_env(uri, runtime))
    assert _current(runtime) == f"versions/{old.directory.name}"
    versions = runtime / "pytorch" / "versions"
    assert sorted(p.name for p in versions.iterdir()) == sorted(
        [old.directory.name, old.directory.name + ".verified.json"])  # no half-extracted dir


def test_hostile_bundle_is_refused_even_with_a_matching_digest(tmp_path: Path) -> None:
    files = {"config.json": b"{}", "model.safetensors": b"w", "tokenizer/t.json": b"{}",
             "thresholds.json": b"{}", "registry_label_fields.json": b"{}"}
    dist = make_dist(tmp_path, files=files)
    # Re-pack the same manifest with a symlink smuggled in, and publish its real digest.
    import gzip
    import io
    import tarfile
    archive = dist / mf.ARCHIVE
    with tarfile.open(archive) as src:
        members = [(m, member_bytes(src, m) if m.isfile() else None) for m in src]
    with gzip.open(archive, "wb") as gz, tarfile.open(fileobj=gz, mode="w|") as out:
        for m, data in members:
            out.addfile(m, io.BytesIO(data) if data is not None else None)
        link = tarfile.TarInfo("tokenizer/evil")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        out.addfile(link)
    from modelkiln.artifacts.digest import sha256_file
    published = mf.with_archive(mf.load(dist / mf.MANIFEST), archive.stat().st_size,
                                sha256_file(archive))
    (dist / mf.MANIFEST).write_bytes(mf.dumps(published))
    uri = publish_bundle(dist, str(tmp_path / "bucket")).archive_uri
    with pytest.raises(UnsafeArchive, match="symlink"):
        bootstrap(_env(uri, tmp_path / "rt"))
    assert not (tmp_path / "rt" / "pytorch" / "current").exists()


def test_inner_manifest_must_match_the_published_one(tmp_path: Path) -> None:
    _dist, uri = _published(tmp_path)
    published_path = transport.local_path(transport.sibling(uri, mf.MANIFEST))
    published = json.loads(published_path.read_bytes())
    published["metadata"] = {"owner": "someone else"}  # archive digest still right
    published_path.write_bytes(mf.dumps(published))
    with pytest.raises(PublishError, match="differs from the published"):
        bootstrap(_env(uri, tmp_path / "rt"))


@pytest.mark.parametrize("env,match", [
    ({}, "MODEL_BACKEND"),
    ({"MODEL_BACKEND": "triton"}, "MODEL_BACKEND"),
    ({"MODEL_BACKEND": "onnx"}, "MODEL_BUNDLE_S3_URI_ONNX is not set"),
    ({"MODEL_BACKEND": "pytorch", "MODEL_BUNDLE_S3_URI_PYTORCH": "https://x/bundle.tar.gz"},
     "only s3:// and file://"),
])
def test_bad_environment_says_what_to_set(tmp_path: Path, env: dict[str, str], match: str) -> None:
    with pytest.raises(KilnError, match=match):
        bootstrap({**env, "REGISTRY_RUNTIME_DIR": str(tmp_path)})


def test_unpublished_or_wrong_backend(tmp_path: Path) -> None:
    with pytest.raises(PublishError, match="not a published bundle"):
        bootstrap(_env((tmp_path / "nowhere" / mf.ARCHIVE).as_uri(), tmp_path / "rt"))
    _, uri = _published(tmp_path, backend="onnx")
    with pytest.raises(KilnError, match="'onnx' bundle, but MODEL_BACKEND=pytorch"):
        bootstrap(_env(uri, tmp_path / "rt", backend="pytorch")
                  | {"MODEL_BUNDLE_S3_URI_PYTORCH": uri})


def test_runtime_imports_stay_light(tmp_path: Path) -> None:
    _, uri = _published(tmp_path)
    code = ("import sys, json; from modelkiln.runtime import bootstrap; bootstrap(); "
            "print(json.dumps(sorted(m for m in ('torch', 'doit', 'transformers', 'yaml', "
            "'jsonschema', 'boto3', 'botocore') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code],
                         env={**os.environ, **_env(uri, tmp_path / "rt")},
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


@pytest.mark.s3
def test_s3_bootstrap_then_cached_start_without_boto3(tmp_path: Path, s3: Any) -> None:
    dist = make_dist(tmp_path, weights=3 << 20)
    uri = publish_bundle(dist, s3.uri("registry/3.0.0/pytorch/")).archive_uri
    env = _env(uri, tmp_path / "rt")
    seen: list[int] = []
    rt = bootstrap(env, progress=seen.append)
    assert rt.downloaded and sum(seen) == (dist / mf.ARCHIVE).stat().st_size
    assert mf.compare_tree(rt.directory, mf.load(dist / mf.MANIFEST)) == []
    code = ("import sys, json; from modelkiln.runtime import bootstrap; r = bootstrap(); "
            "print(json.dumps([r.downloaded, 'botocore' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env},
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [False, False]  # the manifest came by the stdlib fast path


def test_cached_start_keeps_the_previous_version(tmp_path: Path) -> None:
    runtime = tmp_path / "rt"
    _, one = _published(tmp_path, version="1.0.0", seed=1)
    _, two = _published(tmp_path, version="2.0.0", seed=2)
    first = bootstrap(_env(one, runtime)).directory
    second = bootstrap(_env(two, runtime)).directory
    assert not bootstrap(_env(two, runtime)).downloaded  # a plain restart
    assert first.is_dir() and second.is_dir()  # the rollback target survives restarts
    back = bootstrap(_env(one, runtime))  # and rolling back to it downloads nothing
    assert not back.downloaded and _current(runtime) == f"versions/{first.name}"


NOBODY = 65534


@pytest.fixture
def shared_tmp() -> Any:
    """A directory under /tmp that another uid may enter (pytest's own tmp_path is 0700)."""
    import shutil
    import tempfile
    path = Path(tempfile.mkdtemp(prefix="kiln-uid-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _as_nobody(uri: str, runtime: Path) -> subprocess.CompletedProcess[str]:
    """`kiln bootstrap` as the unprivileged user `nobody`: a serving process under another uid."""
    runtime.mkdir(mode=0o777)
    runtime.chmod(0o777)
    env = {"PATH": os.environ.get("PATH", ""), **_env(uri, runtime)}
    kiln = str(Path(sys.executable).parent / "kiln")
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                           kiln, "bootstrap", "--json"], capture_output=True, text=True, env=env,
                          cwd="/", timeout=120)


needs_root = pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/setpriv").exists(),
                                reason="switching to another uid needs root and setpriv")


@needs_root
def test_another_user_can_bootstrap_what_root_published(shared_tmp: Path) -> None:
    old = os.umask(0o022)
    try:
        _, uri = _published(shared_tmp)
    finally:
        os.umask(old)
    done = _as_nobody(uri, shared_tmp / "rt")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["model_version"] == "3.0.0"


@needs_root
def test_an_unreadable_publish_is_one_clear_line_exit_1(shared_tmp: Path) -> None:
    old = os.umask(0o077)  # a publisher whose umask hides its files from every other user
    try:
        _, uri = _published(shared_tmp)
    finally:
        os.umask(old)
    for part in [shared_tmp / "bucket", *(shared_tmp / "bucket").rglob("*")]:
        if part.is_dir():
            part.chmod(0o755)  # the directories readable: only the files are not
    done = _as_nobody(uri, shared_tmp / "rt")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "cannot read" in done.stderr and "Permission denied" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
