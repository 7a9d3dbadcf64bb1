"""copy_file (copy + sha256 in one pass) and ModelStore.copy_in: the digests taken while copying are
what finalize seals, finalize reads none of those files again, and a supplied digest is trusted only
under the documented rule (stat key unchanged, well-formed; a wrong one is caught by verify)."""
from __future__ import annotations

import errno
import hashlib
import os
import signal
from pathlib import Path
from typing import Callable

import pytest

import modelkiln.artifacts.copy as kcopy
from modelkiln.artifacts import digest
from modelkiln.artifacts.copy import copy_file
from modelkiln.errors import DriftError, StoreError
from modelkiln.store import manifest as sm
from modelkiln.store import ModelStore
from modelkiln.store import stat_key

from store_helpers import debris, fork_run, killed

MiB = 1 << 20


def _data(n: int, seed: int = 0) -> bytes:
    out = bytearray()
    block = hashlib.sha256(str(seed).encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[:n])


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


# ------------------------------------------------------------------------------------ copy_file
@pytest.mark.parametrize("size", [0, 1, 4095, 4096, digest.CHUNK - 1, digest.CHUNK,
                                  digest.CHUNK + 1, 9 * digest.CHUNK + 12345])
@pytest.mark.parametrize("durable", [False, True])
def test_copy_file_digest_size_and_bytes(tmp_path: Path, size: int, durable: bool) -> None:
    src, dst = tmp_path / "src.bin", tmp_path / "dst.bin"
    data = _data(size, size)
    src.write_bytes(data)
    got = copy_file(src, dst, durable=durable)
    assert got == (size, digest.sha256_file(src)) == (size, hashlib.sha256(data).hexdigest())
    assert dst.read_bytes() == data


def test_copy_file_background_flushes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A durable copy past FLUSH_EVERY fdatasyncs on a helper thread while it goes on copying."""
    monkeypatch.setattr(kcopy, "FLUSH_EVERY", MiB)
    calls: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (calls.append(fd), real(fd))[1])
    src, dst = tmp_path / "src.bin", tmp_path / "dst.bin"
    data = _data(12 * MiB + 7, 3)
    src.write_bytes(data)
    assert copy_file(src, dst, durable=True) == (len(data), hashlib.sha256(data).hexdigest())
    assert dst.read_bytes() == data and calls


def test_copy_file_keeps_mode_never_overwrites_and_refuses_non_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"abc")
    os.chmod(src, 0o640)
    copy_file(src, tmp_path / "a")
    assert (os.stat(tmp_path / "a").st_mode & 0o777) == 0o640 & ~_umask()
    (tmp_path / "b").write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        copy_file(src, tmp_path / "b")
    assert (tmp_path / "b").read_bytes() == b"keep"
    os.symlink(tmp_path / "elsewhere", tmp_path / "link")
    with pytest.raises(FileExistsError):  # O_NOFOLLOW|O_EXCL: never writes through a link
        copy_file(src, tmp_path / "link")
    assert not (tmp_path / "elsewhere").exists()
    (tmp_path / "dir").mkdir()
    with pytest.raises(OSError, match="not a regular file"):
        copy_file(tmp_path / "dir", tmp_path / "c")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OSError, match="not a regular file"):
        copy_file(tmp_path / "fifo", tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_copy_file_failure_removes_the_partial_copy(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(_data(3 * digest.CHUNK))
    real = os.write
    count = [0]

    def failing(fd: int, data: object) -> int:
        if isinstance(data, memoryview):
            count[0] += 1
            if count[0] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "write", failing)
    with pytest.raises(OSError, match="No space"):
        copy_file(src, dst, durable=True)
    assert not dst.exists()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------------------------ copy_in
def _payload(root: Path) -> dict[str, bytes]:
    files = {"model.safetensors": _data(3 * MiB + 5, 1), "config.json": b'{"a": 1}\n',
             "tokenizer/vocab.txt": _data(70_000, 2), "tokenizer/empty": b""}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "unused-dir").mkdir()
    return files


def test_copy_in_then_finalize_reads_nothing_again(tmp_path: Path, reads: list[str]) -> None:
    files = _payload(tmp_path / "src")
    store = ModelStore(tmp_path / "s")
    with store.stage_new("scout", "1") as tmp:
        got = store.copy_in(tmp, tmp_path / "src", "weights")
        store.copy_in(tmp, tmp_path / "src" / "config.json")  # a file: lands under its own name
    info = store.finalize("scout", "1", {"n": 1})
    assert reads == []  # neither copy_in nor finalize re-read a file
    assert got == {f"weights/{r}": (len(d), hashlib.sha256(d).hexdigest()) for r, d in files.items()}
    manifest = sm.read(info.path)
    assert sm.expected_files(manifest) == {**got, "config.json": got["weights/config.json"]}
    assert (info.path / "weights/unused-dir").is_dir()  # empty directories are copied too
    for rel, data in files.items():
        assert (info.path / "weights" / rel).read_bytes() == data
    store.verify("scout", "1")  # verify never trusts: it reads every file
    assert len(reads) == len(files) + 1
    assert debris(tmp_path / "s" / "scout") == []


def test_file_changed_after_copy_in_is_hashed_again(tmp_path: Path, reads: list[str]) -> None:
    _payload(tmp_path / "src")
    store = ModelStore(tmp_path / "s")
    with store.stage_new("scout", "1") as tmp:
        store.copy_in(tmp, tmp_path / "src")
        with open(tmp / "config.json", "ab") as f:
            f.write(b"changed after the copy\n")
    info = store.finalize("scout", "1")
    assert reads == [str(info.path.parent / "1.tmp" / "config.json")]
    store.verify("scout", "1")


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
    files = sm.expected_files(sm.read(info.path))
    assert files["malformed"][1] == real["malformed"] and files["right"][1] == real["right"]
    assert files["stale"][1] == hashlib.sha256(b"rewritten, another size").hexdigest()
    assert files["wrong"][1] == "f" * 64
    with pytest.raises(DriftError) as err:
        store.verify("scout", "1")
    assert [(c.path, c.kind) for c in err.value.changes] == [("wrong", "changed")]


@pytest.mark.parametrize("case", ["symlink", "manifest", "dotdot", "absolute", "twice", "missing",
                                  "not-staging"])
def test_copy_in_refusals(tmp_path: Path, case: str) -> None:
    src = tmp_path / "src"
    _payload(src)
    store = ModelStore(tmp_path / "s")
    with store.stage_new("scout", "1") as tmp:
        call: Callable[[], object] = lambda: store.copy_in(tmp, src)  # noqa: E731
        if case == "symlink":
            os.symlink("config.json", src / "tokenizer/link")
        elif case == "manifest":
            (src / "manifest.json").write_bytes(b"{}")
        elif case == "dotdot":
            call = lambda: store.copy_in(tmp, src, "a/../../x")  # noqa: E731
        elif case == "absolute":
            call = lambda: store.copy_in(tmp, src, "/etc")  # noqa: E731
        elif case == "twice":
            store.copy_in(tmp, src)
        elif case == "missing":
            call = lambda: store.copy_in(tmp, src / "nope")  # noqa: E731
        else:
            call = lambda: store.copy_in(tmp_path, src)  # noqa: E731
        with pytest.raises(StoreError):
            call()
        if case not in ("twice",):
            assert not (tmp / "model.safetensors").exists()  # refused before copying a byte
        store.discard("scout", "1")
    assert not (tmp_path / "s/scout/versions/1").exists()
    assert not store._copied and not store._staged


def test_discarded_copies_are_not_trusted_later(tmp_path: Path, reads: list[str]) -> None:
    src = tmp_path / "src"
    _payload(src)
    store = ModelStore(tmp_path / "s")
    with store.stage_new("scout", "1") as tmp:
        store.copy_in(tmp, src / "config.json")
    store.discard("scout", "1")
    with store.stage_new("scout", "1") as tmp:
        (tmp / "config.json").write_bytes(b"other bytes")
    info = store.finalize("scout", "1")
    assert len(reads) == 1
    assert sm.expected_files(sm.read(info.path))["config.json"][1] == \
        hashlib.sha256(b"other bytes").hexdigest()


# ------------------------------------------------------------------------------- crash safety
STEPS = ("rename", "replace", "fsync", "symlink", "unlink")


def _instrument(kill_at: int, counter: list[int]) -> None:
    for name in STEPS:
        real = getattr(os, name)

        def wrapper(*args: object, _real: Callable = real, **kwargs: object) -> object:
            counter[0] += 1
            if counter[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return _real(*args, **kwargs)

        setattr(os, name, wrapper)


def test_kill_at_every_step_of_copy_in_and_finalize(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _payload(src)
    (src / "more").mkdir()
    (src / "more" / "shard").write_bytes(_data(2 * MiB, 9))

    def publish(root: Path, version: str) -> None:
        store = ModelStore(root, workers=1)
        with store.stage_new("scout", version) as tmp:
            store.copy_in(tmp, src)
        store.finalize("scout", version)

    template = tmp_path / "template"
    publish(template, "1")
    counter = [0]

    def probe() -> None:
        _instrument(10**9, counter)
        publish(tmp_path / "probe", "2")
        os._exit(100 + counter[0])

    status = fork_run(probe)
    steps = os.WEXITSTATUS(status) - 100
    assert steps >= 10
    for k in range(1, steps + 1):
        root = tmp_path / f"k{k}"
        os.system(f"cp -a {template} {root}")

        def child() -> None:
            _instrument(k, [0])
            publish(root, "2")

        assert killed(fork_run(child))
        store = ModelStore(root, strict=True)
        assert store.current_version("scout") in ("1", "2")
        store.verify("scout")
        publish(root, "2")
        assert store.current_version("scout") == "2" and debris(root / "scout") == []
        store.verify("scout", "2")


def test_publish_to_store_reads_no_unpacked_file_back(tmp_path: Path, reads: list[str]) -> None:
    """safe_extract hashes each file as it writes it and checks it against the bundle manifest;
    those digests go to finalize, which reads back only the bundle's own small manifest.json."""
    from distfactory import make_dist
    from modelkiln.publish.store import publish_to_store

    dist = make_dist(tmp_path, version="1", seed=1, weights=300_000)
    result = publish_to_store(dist, tmp_path / "s", "registry", "1", {})
    staged = [p for p in reads if "/versions/1.tmp/" in p]
    assert [p.split("/versions/1.tmp/")[1] for p in staged] == ["bundle/manifest.json"]
    assert len(sm.expected_files(sm.read(result.path))) >= 3
    reads.clear()
    ModelStore(tmp_path / "s").verify("registry", "1")  # the recorded digests are the real ones
    assert len(reads) == len(sm.expected_files(sm.read(result.path)))
