"""safe_extract against a corpus of hostile tarballs built here, plus the bundles we really ship."""
from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest

from distfactory import make_dist
from modelkiln.artifacts import manifest as mf
from modelkiln.artifacts.digest import sha256_bytes
from modelkiln.artifacts.extract import UnsafeArchive, check_name, safe_extract
from modelkiln.artifacts.extract_limits import Budget, Limits
from modelkiln.errors import KilnError


def _tar(path: Path, members: Sequence[tuple[tarfile.TarInfo, bytes | None]], *,
         fmt: int = tarfile.PAX_FORMAT, level: int = 6) -> Path:
    """A gzip tarball holding exactly `members` (data None: no payload)."""
    with gzip.open(path, "wb", compresslevel=level) as gz, \
            tarfile.open(fileobj=gz, mode="w|", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


class _Zeros(io.RawIOBase):
    """`n` zero bytes without holding them in memory: payload for bomb members."""

    def __init__(self, n: int):
        self.left = n

    def readable(self) -> bool:
        return True

    # io hands readinto a memoryview; typeshed's WriteableBuffer has no slice assignment
    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n


OUTSIDE = f"/tmp/kiln-evil-{uuid.uuid4().hex}"

HOSTILE: dict[str, list[tuple[tarfile.TarInfo, bytes | None]]] = {
    "absolute path": [_file(OUTSIDE)],
    "dot-dot": [_file("../evil")],
    "dot-dot inside": [_file("tokenizer/../../evil")],
    "dot component": [_file("./config.json")],
    "empty component": [_file("a//b")],
    "symlink out": [_special("link", tarfile.SYMTYPE, "/etc"), _file("link/passwd")],
    "symlink relative": [_special("up", tarfile.SYMTYPE, "..")],
    "hardlink out": [_special("h", tarfile.LNKTYPE, "../../outside")],
    "hardlink in": [_file("a"), _special("b", tarfile.LNKTYPE, "a")],
    "char device": [_special("null", tarfile.CHRTYPE)],
    "block device": [_special("disk", tarfile.BLKTYPE)],
    "fifo": [_special("pipe", tarfile.FIFOTYPE)],
    "duplicate file": [_file("a", b"one"), _file("a", b"two")],
    "file then dir": [_file("a"), _special("a", tarfile.DIRTYPE)],
    "file under a file": [_file("a"), _file("a/b")],
    "control character": [_file("evil\nname")],
    "backslash": [_file("..\\evil")],
}


def _assert_clean(sandbox: Path, dest: Path) -> None:
    """Nothing outside `dest`, nothing left inside it."""
    assert sorted(p.name for p in sandbox.iterdir()) == [dest.name, "hostile.tar.gz"]
    assert list(dest.iterdir()) == []
    assert not os.path.lexists(OUTSIDE)


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_member_is_refused_and_nothing_is_written(tmp_path: Path, case: str) -> None:
    archive = _tar(tmp_path / "hostile.tar.gz", HOSTILE[case])
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchive) as err:
        safe_extract(archive, dest)
    assert err.value.member  # names the member (or the archive) and why
    assert err.value.why in str(err.value)
    _assert_clean(tmp_path, dest)


def test_non_utf8_name_is_refused(tmp_path: Path) -> None:
    info = tarfile.TarInfo("placeholder")
    info.size = 1
    block = bytearray(info.tobuf(tarfile.USTAR_FORMAT))
    block[0:11] = b"bad\xff\xfename\x00\x00"
    block[148:156] = b"        "
    block[148:155] = f"{sum(block):06o}\0".encode()
    raw = bytes(block) + b"x".ljust(512, b"\0") + bytes(1024)
    archive = tmp_path / "hostile.tar.gz"
    archive.write_bytes(gzip.compress(raw))
    with pytest.raises(UnsafeArchive, match="UTF-8"):
        safe_extract(archive, tmp_path / "dest")
    _assert_clean(tmp_path, tmp_path / "dest")


def test_gzip_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    info = tarfile.TarInfo("model.safetensors")
    info.size = 300 << 20  # 300 MiB of zeros: ~300 KiB compressed, 1000:1
    archive = tmp_path / "hostile.tar.gz"
    with gzip.open(archive, "wb", compresslevel=1) as gz, tarfile.open(fileobj=gz, mode="w|") as t:
        t.addfile(info, io.BufferedReader(_Zeros(info.size)))
    with pytest.raises(UnsafeArchive, match="KILN_EXTRACT_MAX_RATIO=100 times"):
        safe_extract(archive, tmp_path / "dest")
    _assert_clean(tmp_path, tmp_path / "dest")


def test_total_size_budget_counts_every_member(tmp_path: Path) -> None:
    members = [_file(f"part{i}", bytes(400_000)) for i in range(4)]
    archive = _tar(tmp_path / "hostile.tar.gz", members)
    with pytest.raises(UnsafeArchive, match="past the limit of 1000000 bytes") as err:
        safe_extract(archive, tmp_path / "dest", max_bytes=1_000_000)
    assert err.value.member == "part2"
    _assert_clean(tmp_path, tmp_path / "dest")


def test_oversized_pax_header_is_refused_from_its_size(tmp_path: Path) -> None:
    info = tarfile.TarInfo("a")
    info.size = 1
    info.pax_headers = {"comment": "z" * (8 << 20)}  # an 8 MiB header record, tiny payload
    archive = _tar(tmp_path / "hostile.tar.gz", [(info, b"x")])
    with pytest.raises(UnsafeArchive, match=r"pax header of 8388625 bytes \(at most 65536"):
        safe_extract(archive, tmp_path / "dest")
    _assert_clean(tmp_path, tmp_path / "dest")


def test_member_larger_than_declared_is_refused(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "hostile.tar.gz", [_file("a", b"x" * 20)])
    with pytest.raises(UnsafeArchive, match="differs from the declared 10"):
        safe_extract(archive, tmp_path / "dest", sizes={"a": 10})
    _assert_clean(tmp_path, tmp_path / "dest")


def test_unlisted_and_missing_files_are_refused(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "hostile.tar.gz", [_file("a"), _file("extra")])
    with pytest.raises(UnsafeArchive, match="not listed"):
        safe_extract(archive, tmp_path / "dest", sizes={"a": 1})
    with pytest.raises(UnsafeArchive, match="missing"):
        safe_extract(archive, tmp_path / "dest", sizes={"a": 1, "extra": 1, "gone": 3})
    _assert_clean(tmp_path, tmp_path / "dest")


def test_truncated_member_is_refused(tmp_path: Path) -> None:
    info = tarfile.TarInfo("weights")
    info.size = 100_000
    raw = info.tobuf(tarfile.USTAR_FORMAT) + os.urandom(3000)  # header promises far more
    archive = tmp_path / "hostile.tar.gz"
    archive.write_bytes(gzip.compress(raw))
    with pytest.raises(UnsafeArchive, match=r"truncated|corrupt"):
        safe_extract(archive, tmp_path / "dest")
    _assert_clean(tmp_path, tmp_path / "dest")


def test_garbage_header_mid_archive_is_not_a_silent_end(tmp_path: Path) -> None:
    good = _file("a")[0].tobuf(tarfile.USTAR_FORMAT) + b"x".ljust(512, b"\0")
    raw = good + os.urandom(512) + _file("b")[0].tobuf(tarfile.USTAR_FORMAT) + bytes(2048)
    archive = tmp_path / "hostile.tar.gz"
    archive.write_bytes(gzip.compress(raw))
    with pytest.raises(UnsafeArchive, match="corrupt"):
        safe_extract(archive, tmp_path / "dest")
    _assert_clean(tmp_path, tmp_path / "dest")


def test_corrupt_gzip_is_refused(tmp_path: Path) -> None:
    dist = make_dist(tmp_path / "build")
    data = bytearray((dist / mf.ARCHIVE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive = tmp_path / "hostile.tar.gz"
    archive.write_bytes(bytes(data))
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchive):
        safe_extract(archive, dest)
    assert list(dest.iterdir()) == []


def test_member_count_is_capped_by_the_host(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "hostile.tar.gz", [_file(f"f{i}") for i in range(6)])
    with pytest.raises(UnsafeArchive, match="more than 5 files and directories"):
        safe_extract(archive, tmp_path / "dest", limits=Limits(max_files=5))
    _assert_clean(tmp_path, tmp_path / "dest")


def test_dest_must_be_fresh(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "ok.tar.gz", [_file("a")])
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep").write_text("mine")
    with pytest.raises(KilnError, match="not empty"):
        safe_extract(archive, busy)
    assert (busy / "keep").read_text() == "mine"
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(KilnError, match="symlink"):
        safe_extract(archive, tmp_path / "link")
    assert not (tmp_path / "elsewhere").exists()


def test_real_bundle_round_trips(tmp_path: Path) -> None:
    dist = make_dist(tmp_path / "build", backend="onnx")
    published = mf.load(dist / mf.MANIFEST)
    sizes: dict[str, int | None] = {f["path"]: f["size"] for f in published["files"]}
    sizes[mf.MANIFEST] = None
    dest = tmp_path / "dest"
    names = safe_extract(dist / mf.ARCHIVE, dest, sizes=sizes)
    assert names == sorted([*(f["path"] for f in published["files"]), mf.MANIFEST])
    inner = mf.load(dest / mf.MANIFEST)
    assert mf.compare_tree(dest, inner) == []
    assert all(oct(p.stat().st_mode & 0o7777) in ("0o644", "0o755") for p in dest.rglob("*"))


@pytest.mark.parametrize("name,ok", [("tokenizer/vocab.txt", True), ("a b/ü.json", True),
                                     ("", False), ("/x", False), ("x/..", False),
                                     ("x\x00y", False), ("a" * 256, False)])
def test_check_name(name: str, ok: bool) -> None:
    assert (check_name(name) is None) is ok


def test_listed_digest_is_checked_as_bytes_are_written(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "hostile.tar.gz", [_file("a", b"real"), _file("b", b"fake")])
    good = {"a": sha256_bytes(b"real"), "b": sha256_bytes(b"what the manifest says")}
    with pytest.raises(UnsafeArchive, match="sha256") as err:
        safe_extract(archive, tmp_path / "dest", sha256s=good)
    assert err.value.member == "b"
    _assert_clean(tmp_path, tmp_path / "dest")
    good["b"] = sha256_bytes(b"fake")
    assert safe_extract(archive, tmp_path / "dest", sha256s=good) == ["a", "b"]


def test_zero_padding_after_and_between_gzip_members_is_accepted(tmp_path: Path) -> None:
    one = gzip.compress(_file("a", b"one")[0].tobuf(tarfile.USTAR_FORMAT) + b"one".ljust(512, b"\0"))
    two = gzip.compress(_file("b", b"two")[0].tobuf(tarfile.USTAR_FORMAT) + b"two".ljust(512, b"\0")
                        + bytes(1024))
    archive = tmp_path / "padded.tar.gz"
    archive.write_bytes(one + bytes(37) + two + bytes(4096))  # what `gzip -d` and tarfile accept
    assert safe_extract(archive, tmp_path / "dest") == ["a", "b"]
    assert (tmp_path / "dest" / "b").read_bytes() == b"two"


def test_host_limits_come_from_the_environment() -> None:
    env = {"KILN_EXTRACT_MAX_BYTES": "2G", "KILN_EXTRACT_MAX_FILES": "50",
           "KILN_EXTRACT_MAX_RATIO": "7"}
    assert Limits.from_env(env) == Limits(max_bytes=2 << 30, max_files=50, max_ratio=7)
    assert Limits.from_env({"KILN_EXTRACT_MAX_BYTES": "512MiB"}).max_bytes == 512 << 20
    assert Limits.from_env({"KILN_EXTRACT_MAX_BYTES": "1000"}).max_bytes == 1000
    assert Limits.from_env({}) == Limits()


@pytest.mark.parametrize("var,value", [("KILN_EXTRACT_MAX_BYTES", "lots"),
                                       ("KILN_EXTRACT_MAX_BYTES", "0"),
                                       ("KILN_EXTRACT_MAX_FILES", "10k"),
                                       ("KILN_EXTRACT_MAX_RATIO", "-3")])
def test_a_bad_limit_is_one_line_naming_the_variable(var: str, value: str) -> None:
    with pytest.raises(KilnError, match=f"{var}=.*not a positive number") as err:
        Limits.from_env({var: value})
    assert "\n" not in str(err.value)


def test_the_manifest_can_tighten_but_never_loosen_the_host_limit(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "hostile.tar.gz", [_file("a", bytes(5000))])
    with pytest.raises(UnsafeArchive, match=r"past the limit of 4096 bytes \(the host's KILN_"):
        safe_extract(archive, tmp_path / "dest", sizes={"a": 5000},
                     limits=Limits(max_bytes=4096))
    _assert_clean(tmp_path, tmp_path / "dest")
    budget = Budget.of(Limits(), archive_size=10 << 20, declared=5010)
    assert (budget.max_bytes, budget.bytes_from) == (5010, "the total the manifest declares")
    loose = Budget.of(Limits(max_bytes=4096), archive_size=10 << 20, declared=1 << 40)
    assert loose.max_bytes == 4096 and loose.host_bound
    ratio = Budget.of(Limits(), archive_size=1 << 20, declared=1 << 40)
    assert ratio.max_bytes == 100 << 20 and "KILN_EXTRACT_MAX_RATIO=100" in ratio.bytes_from


def test_an_oversized_pax_header_is_refused_after_reading_one_block() -> None:
    from modelkiln.artifacts.tarheaders import BadTar, TarReader
    head = tarfile.TarInfo("././@PaxHeader")
    head.type, head.size = tarfile.XHDTYPE, 200 << 20
    stream = io.BytesIO(head.tobuf(tarfile.USTAR_FORMAT) + b"9" * (1 << 20))
    reader = TarReader(stream.read)
    with pytest.raises(BadTar, match="pax header of 209715200 bytes"):
        reader.next()
    assert stream.tell() == 512


def test_write_errors_are_refusals_not_tracebacks(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*["d" * 200] * 18)  # ~3.6 KB of path: a long member name passes 4096
    archive = _tar(tmp_path / "hostile.tar.gz", [_file("n" * 200 + "/" + "m" * 250)])
    with pytest.raises(UnsafeArchive, match=r"cannot unpack it here \(File name too long"):
        safe_extract(archive, deep, durable=False)
    assert list(deep.iterdir()) == []


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar is not installed")
@pytest.mark.parametrize("fmt", ["gnu", "posix", "ustar"])
def test_gnu_tar_output_is_read_like_tar_reads_it(tmp_path: Path, fmt: str) -> None:
    src = tmp_path / "src"
    long_name = "tokenizer/" + "l" * 90 + "/" + "v" * 60 + ".json"  # > 100 bytes
    for rel, data in {"config.json": b"{}", long_name: b'{"v": 1}', "ü.txt": b"u"}.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    archive = tmp_path / "gnu.tar.gz"
    subprocess.run(["tar", f"--format={fmt}", "-czf", str(archive), "-C", str(src), "."],
                   check=True)
    with pytest.raises(UnsafeArchive, match=r"path component '\.'"):  # GNU tar writes ./name
        safe_extract(archive, tmp_path / "dot")
    names = ["config.json", long_name, "ü.txt"]  # ustar: the long name split into prefix + name
    subprocess.run(["tar", f"--format={fmt}", "-czf", str(archive), "-C", str(src), *names],
                   check=True)
    assert safe_extract(archive, tmp_path / "dest") == sorted(names)
    assert (tmp_path / "dest" / names[-1]).read_bytes() == b"u"
