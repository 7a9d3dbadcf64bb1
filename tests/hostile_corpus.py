"""The hostile archives `kiln bootstrap` must refuse, and the odd-but-valid ones it must accept.

Each HOSTILE case says what the one `kiln:` line must contain, so a refusal for some other
reason (a digest mismatch, a file not listed) does not count. Built by hostile_archives.py.
"""
from __future__ import annotations

import gzip
import hashlib
import random
from collections.abc import Callable

from hostile_archives import (
    GNU,
    UP,
    Case,
    Hostile,
    Listed,
    gzip_member,
    header,
    longname,
    member,
    one,
    pad,
    pax,
    rec,
    special,
)

MiB, GiB = 1 << 20, 1 << 30
ZEROS_10G_SHA256 = "732377e7f4a2abdc13ddfa1eb4c9c497fd2a2b294674d056cf51581b47dd586d"
NO_DIGEST = "0" * 64  # for a file whose bytes cannot exist (sizes past 2^63)


def _file(name: str, data: bytes = b"x") -> Hostile:
    """A regular file with a hostile name, listed in the manifest under that name."""
    return one(member(name, data), Listed.of(name, data))


def _after(ext: bytes, name: str = "x", data: bytes = b"x") -> Hostile:
    """Extended headers `ext`, then a plain member they apply to."""
    return one(ext + member(name, data), Listed.of(name, data))


def _gnu_after(ext: bytes, name: bytes = b"x") -> Hostile:
    return one(ext + header(name, 1, magic=GNU) + pad(b"x"))


def _sparse(*records: tuple[bytes, bytes]) -> Hostile:
    return _after(pax(b"".join(rec(k, v) for k, v in records)), "sparse", b"s" * 512)


def _patched(block: bytes, at: int, data: bytes) -> bytes:
    """`block` with `data` written at `at` and its checksum recomputed."""
    b = bytearray(block)
    b[at:at + len(data)] = data
    b[148:156] = b" " * 8
    b[148:156] = f"{sum(b):06o}\0 ".encode()
    return bytes(b)


def _zeros_sha256(n: int) -> str:
    h, chunk = hashlib.sha256(), bytes(MiB)
    for _ in range(n // MiB):
        h.update(chunk)
    return h.hexdigest()


def _big_pax() -> Hostile:
    """A 200 MiB pax record (it cost 620 MiB before), as gzip members of 64 MiB."""
    total = 200 * MiB
    head = f"{total} comment=".encode()
    body = 64 * MiB
    rest = total - len(head) - 3 * body - 1
    return Hostile(segments=[(header(b"././@PaxHeader", total, b"x") + head, 1),
                             (b"z" * body, 3), (pad(b"z" * rest + b"\n") + member("x"), 1)])


def _zeros(name: str, size: int, listed: bool = True) -> Hostile:
    """`size` zero bytes as member `name`, 64 MiB gzip members repeated (a gzip bomb)."""
    unit = min(size, 64 * MiB)
    digest = ZEROS_10G_SHA256 if size == 10 * GiB else _zeros_sha256(size)
    return Hostile(segments=[(header(name.encode(), size), 1), (bytes(unit), size // unit)],
                   listed=[Listed(name, size, digest)] if listed else [])


def _deep(levels: int) -> str:
    return "d/" * (levels - 1) + "f"


def _flip(at: int) -> Callable[[bytes], bytes]:
    def mangle(b: bytes) -> bytes:
        out = bytearray(b)
        out[at] ^= 0xFF
        return bytes(out)
    return mangle


_SPARSE_S = header(b"sparse", 0, b"S", magic=GNU)
_RANDOM_BLOCK = random.Random(7).randbytes(512)

HOSTILE: list[Case] = [
    # Names that point outside, or are not plain relative names.
    Case("absolute path", "absolute path", lambda o: _file(str(o / "evil"))),
    Case("dot-dot", "path component '..'", lambda o: _file(UP + "outside/evil")),
    Case("dot-dot inside a name", "path component '..'",
         lambda o: _file("tokenizer/../" + UP + "outside/evil")),
    Case("dot component", "path component '.'", lambda o: _file("./config2.json")),
    Case("empty component", "path component ''", lambda o: _file("a//b")),
    Case("regular file with a trailing slash", "path component ''", lambda o: _file("evil/")),
    Case("absolute path in a pax record", "absolute path",
         lambda o: one(pax(rec(b"path", str(o / "evil").encode())) + member("benign"),
                       Listed.of(str(o / "evil"), b""))),
    Case("dot-dot in a GNU long name", "path component '..'",
         lambda o: _gnu_after(longname((UP + "outside/evil").encode()))),
    Case("line break in a name", "control character", lambda o: _file("evil\nname")),
    Case("backslash", "backslash", lambda o: _file("..\\evil")),
    Case("NUL inside a pax path", "control character",
         lambda o: one(pax(rec(b"path", b"ev\0il")) + member("x"), Listed.of("ev\0il", b""))),
    Case("empty name", "empty name", lambda o: one(header(b"", 1) + pad(b"x"))),
    Case("name not UTF-8", "not valid UTF-8", lambda o: one(header(b"bad\xff\xfe", 1) + pad(b"x"))),
    Case("pax path not UTF-8", "not valid UTF-8",
         lambda o: one(pax(rec(b"path", b"\xff\xfe")) + member("x"))),
    Case("GNU long name not UTF-8", "not valid UTF-8",
         lambda o: _gnu_after(longname(b"\xff" * 10))),
    Case("1,200 directories deep", "1200 levels deep", lambda o: _file(_deep(1200))),
    Case("40 directories deep", "40 levels deep", lambda o: _file(_deep(40))),
    Case("3,999-byte name", "name of 3999 bytes",
         lambda o: _file(("a" * 249 + "/") * 15 + "a" * 249)),
    Case("300-byte path component", "longer than 255 bytes", lambda o: _file("c" * 300)),
    # Members that are not regular files or directories.
    Case("symlink out, then a file through it", "symlink",
         lambda o: one(special("link", b"2", "/etc") + member("link/passwd"),
                       Listed.of("link/passwd", b""))),
    Case("symlink to ..", "symlink", lambda o: one(special("up", b"2", ".."))),
    Case("symlink to the canary", "symlink", lambda o: one(special("canary", b"2", str(o)))),
    Case("symlink over a bundle file", "symlink",
         lambda o: one(special("thresholds.json", b"2", "/etc/passwd"))),
    Case("hardlink out", "hardlink", lambda o: one(special("h", b"1", UP + "outside/x"))),
    Case("hardlink to a bundle file", "hardlink", lambda o: one(special("h", b"1", "config.json"))),
    Case("hardlink through a pax linkpath", "hardlink",
         lambda o: one(pax(rec(b"linkpath", b"/etc/passwd")) + special("h", b"1"))),
    Case("symlink through a GNU long link", "symlink",
         lambda o: one(longname(b"/etc/" + b"x" * 200, b"K") + header(b"l", 0, b"2", magic=GNU))),
    Case("character device", "character device", lambda o: one(special("null", b"3"))),
    Case("block device", "block device", lambda o: one(special("disk", b"4"))),
    Case("fifo", "fifo", lambda o: one(special("pipe", b"6"))),
    Case("contiguous file", "contiguous file",
         lambda o: one(member("c", b"x", kind=b"7"), Listed.of("c", b"x"))),
    Case("volume label", "volume label", lambda o: one(special("vol", b"V"))),
    Case("GNU dump directory", "GNU dump directory",
         lambda o: one(member("dumpdir", b"Yx\0\0", kind=b"D"))),
    Case("unknown type flag", "unsupported member type",
         lambda o: one(member("z", b"x", kind=b"Z"), Listed.of("z", b"x"))),
    # Clashes between members.
    Case("duplicate file", "duplicate name",
         lambda o: one(member("dup", b"one") + member("dup", b"two"), Listed.of("dup", b"one"))),
    Case("second copy of a bundle file", "duplicate name",
         lambda o: one(member("config.json", b'{"model_type": "gpt"}'))),
    Case("file then a directory of that name", "duplicate name",
         lambda o: one(member("a") + member("a/", kind=b"5"), Listed.of("a", b""))),
    Case("file then a file under it", "a parent of this name is a regular file",
         lambda o: one(member("a") + member("a/b"), Listed.of("a", b""), Listed.of("a/b", b""))),
    Case("a/b then a regular file a", "a directory of this name is already in the archive",
         lambda o: one(member("a/b") + member("a"), Listed.of("a/b", b""), Listed.of("a", b""))),
    Case("directory twice", "duplicate name", lambda o: one(member("d/", kind=b"5") * 2)),
    Case("file over the tokenizer directory", "duplicate name",
         lambda o: one(member("tokenizer"), Listed.of("tokenizer", b""))),
    Case("directory with data", "directory with 512 bytes of data",
         lambda o: one(header(b"d/", 512, b"5") + bytes(512))),
    # Pax headers: size caps, malformed records, sparse maps, charsets.
    Case("40,000-digit pax record", "malformed pax record",
         lambda o: _after(pax(b"1" * 40_000))),
    Case("1 MiB of pax digits", "pax header of 1048576 bytes", lambda o: _after(pax(b"1" * MiB))),
    Case("200 MiB pax record", f"pax header of {200 * MiB} bytes", lambda o: _big_pax()),
    Case("pax record of length 0", "malformed pax record", lambda o: _after(pax(b"0 path=x\n"))),
    Case("pax record longer than its header", "malformed pax record",
         lambda o: _after(pax(b"99 path=x\n"))),
    Case("pax record without '='", "no keyword=value", lambda o: _after(pax(b"9 pathxy\n"))),
    Case("pax keyword not UTF-8", "pax keyword is not valid UTF-8",
         lambda o: _after(pax(rec(b"\xff\xfe", b"1")))),
    Case("junk after the pax records", "bytes after its last record",
         lambda o: _after(pax(rec(b"comment", b"x") + b"\0junk"))),
    Case("two pax headers for one member", "two pax headers",
         lambda o: _after(pax(rec(b"comment", b"a")) + pax(rec(b"comment", b"b")))),
    Case("pax header with no member after it", "extended header with no member",
         lambda o: Hostile(before_end=pax(rec(b"path", b"x")))),
    Case("GNU long name with no member after it", "extended header with no member",
         lambda o: Hostile(before_end=longname(b"x"))),
    Case("two GNU long names for one member", "two GNU long names",
         lambda o: _gnu_after(longname(b"a") + longname(b"b"))),
    Case("GNU long name over its cap", "GNU long name of 5001 bytes",
         lambda o: _gnu_after(longname(b"n" * 5000))),
    Case("global pax header sets path", "global pax header sets 'path'",
         lambda o: _after(pax(rec(b"path", b"evil"), b"g"))),
    Case("17 global pax headers", "more than 16 global pax headers",
         lambda o: _after(pax(rec(b"comment", b"c"), b"g") * 17)),
    Case("hdrcharset BINARY", "pax hdrcharset 'BINARY'",
         lambda o: _after(pax(rec(b"hdrcharset", b"BINARY") + rec(b"path", b"\xff\xfe")))),
    Case("hdrcharset not UTF-8 itself", "pax hdrcharset",
         lambda o: _after(pax(rec(b"hdrcharset", b"\xff\xfe\xfd")))),
    Case("sparse 1.0 pax keys", "sparse member", lambda o: _sparse(
        (b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0"),
        (b"GNU.sparse.name", b"s"), (b"GNU.sparse.realsize", b"999999999999"))),
    Case("sparse 0.0 pax keys", "sparse member", lambda o: _sparse(
        (b"GNU.sparse.numblocks", b"1"), (b"GNU.sparse.offset", b"0"),
        (b"GNU.sparse.numbytes", b"1"))),
    Case("sparse 0.1 pax map (memory)", "sparse member", lambda o: _sparse(
        (b"GNU.sparse.size", b"99999999999"), (b"GNU.sparse.map", b"0,1," * 10_000 + b"0,1"))),
    Case("sparse 0.1 map not numeric", "sparse member",
         lambda o: _sparse((b"GNU.sparse.map", b"a,b"))),
    Case("sparse size not numeric", "sparse member",
         lambda o: _sparse((b"GNU.sparse.size", b"x"), (b"GNU.sparse.realsize", b"y"))),
    Case("sparse 1.0 with a non-numeric map in its data", "sparse member", lambda o: _after(
        pax(rec(b"GNU.sparse.major", b"1") + rec(b"GNU.sparse.minor", b"0")), "s",
        pad(b"x\ny\n"))),
    Case("GNU sparse type S", "sparse file", lambda o: one(_SPARSE_S)),
    Case("GNU sparse type S, non-numeric fields", "sparse file",
         lambda o: one(_patched(_SPARSE_S, 386, b"zz zz zz zz zz zz zz zz"))),
    Case("GNU sparse type S, huge real size", "sparse file",
         lambda o: one(_patched(_SPARSE_S, 483, b"\x80" + (1 << 80).to_bytes(11, "big")))),
    # Sizes: lies, huge values, bombs.
    Case("pax size not a number", "pax size '12abc' is not a decimal number",
         lambda o: _after(pax(rec(b"size", b"12abc")))),
    Case("pax size of 30 digits", "is not a decimal number",
         lambda o: _after(pax(rec(b"size", b"9" * 30)))),
    Case("pax size of 2^63", "past the limit", lambda o: one(
        pax(rec(b"size", str(1 << 63).encode())) + member("big"),
        Listed("big", 1 << 63, NO_DIGEST))),
    Case("8 GiB declared in a ustar header", "past the limit",
         lambda o: one(header(b"big", 8**11 - 1) + pad(b"x"), Listed("big", 8**11 - 1, NO_DIGEST))),
    Case("base-256 size of 2^80", "past the limit",
         lambda o: one(header(b"big", size_field=b"\x80" + (1 << 80).to_bytes(11, "big")),
                       Listed("big", 1 << 80, NO_DIGEST))),
    Case("negative base-256 size", "negative size",
         lambda o: one(header(b"neg", size_field=b"\xff" * 12))),
    Case("size field not octal", "is not an octal number",
         lambda o: one(header(b"s", size_field=b"12345678z\0\0\0"))),
    Case("10 GiB of zeros, honestly declared", "KILN_EXTRACT_MAX_RATIO=100 times",
         lambda o: _zeros("weights.bin", 10 * GiB)),
    Case("70 MiB of zeros in a tiny archive", "KILN_EXTRACT_MAX_RATIO=100 times",
         lambda o: _zeros("weights.bin", 70 * MiB)),
    Case("1 GiB of zeros as the bundle manifest", "exceeds the 16777216-byte limit",
         lambda o: _zeros("manifest.json", GiB, listed=False)),
    Case("gzip bomb after the end marker", "after the end-of-archive marker",
         lambda o: Hostile(mangle=lambda b: b + gzip_member(bytes(64 * MiB)) * 16)),
    Case("member data cut short", "truncated",
         lambda o: one(header(b"weights", 100_000) + bytes(3000),
                       Listed("weights", 100_000, NO_DIGEST))),
    # refused from the manifest's file list, before anything is downloaded (issue 19 item 12)
    Case("more files than KILN_EXTRACT_MAX_FILES", "files, more than the 20 files and directories this host unpacks",
         lambda o: Hostile(segments=[(b"".join(member(f"f{i}") for i in range(30)), 1)],
                           listed=[Listed.of(f"f{i}", b"") for i in range(30)],
                           env={"KILN_EXTRACT_MAX_FILES": "20"})),
    Case("more directories than KILN_EXTRACT_MAX_FILES", "more than 20 files and directories",
         lambda o: Hostile(segments=[(b"".join(member(f"d{i}/", kind=b"5") for i in range(30)), 1)],
                           env={"KILN_EXTRACT_MAX_FILES": "20"})),
    Case("bigger than KILN_EXTRACT_MAX_BYTES", "KILN_EXTRACT_MAX_BYTES",
         lambda o: Hostile(segments=[(member("big", bytes(4096)), 1)],
                           listed=[Listed.of("big", bytes(4096))],
                           env={"KILN_EXTRACT_MAX_BYTES": "4K"})),
    # Broken headers and streams.
    Case("bad header checksum", "checksum mismatch",
         lambda o: one(header(b"x", 1, checksum=b"000000\0 ") + pad(b"x"))),
    Case("header checksum not a number", "checksum field is not a number",
         lambda o: one(header(b"x", 1, checksum=b"zzzzzz\0 ") + pad(b"x"))),
    Case("header without ustar magic", "not a ustar, pax or GNU tar header",
         lambda o: one(header(b"x", 1, magic=bytes(8)) + pad(b"x"))),
    Case("random block between members", "corrupt", lambda o: one(_RANDOM_BLOCK)),
    Case("data after the end-of-archive marker", "data after the end-of-archive marker",
         lambda o: Hostile(tail=member("late"))),
    Case("3 MiB of zeros after the end marker", "more than 2097152 bytes after",
         lambda o: Hostile(tail=bytes(3 * MiB))),
    Case("gzip cut in half", "corrupt or truncated",
         lambda o: Hostile(mangle=lambda b: b[:len(b) // 2])),
    Case("gzip without its trailer", "ends inside a gzip member",
         lambda o: Hostile(mangle=lambda b: b[:-8])),
    Case("gzip CRC wrong", "incorrect data check", lambda o: Hostile(mangle=_flip(-8))),
    Case("gzip length wrong", "incorrect length check", lambda o: Hostile(mangle=_flip(-1))),
    Case("garbage after the gzip stream", "not a valid gzip stream",
         lambda o: Hostile(mangle=lambda b: b + b"garbage!")),
    Case("zero padding, then garbage", "not a valid gzip stream",
         lambda o: Hostile(mangle=lambda b: b + bytes(100) + b"junk")),
    Case("plain tar, not gzip", "not a valid gzip stream",
         lambda o: Hostile(mangle=gzip.decompress)),
    Case("empty archive file", "ends inside a gzip member", lambda o: Hostile(mangle=lambda b: b"")),
    Case("gzip of nothing", "listed file is missing",
         lambda o: Hostile(mangle=lambda b: gzip_member(b""))),
    # Refused by the bootstrap before anything is unpacked.
    Case("300-character version", "not a usable version name",
         lambda o: Hostile(version="v" * 300)),
    Case("version with a slash", "not a usable version name",
         lambda o: Hostile(version="../../x")),
]

# Odd but valid: what gzip, GNU tar and tarfile accept, the bootstrap must accept too.
ACCEPTED: list[Case] = [
    Case("plain bundle", "", lambda o: Hostile()),
    Case("zero padding after the gzip stream", "", lambda o: Hostile(mangle=lambda b: b + bytes(4096))),
    Case("tar record padding after the end marker", "", lambda o: Hostile(tail=bytes(8192))),
    Case("pax long name", "", lambda o: _file("tokenizer/" + "l" * 150 + ".json")),
    Case("GNU long name", "", lambda o: one(
        longname(b"tokenizer/" + b"g" * 150) + header(b"placeholder", 1, magic=GNU) + pad(b"x"),
        Listed.of("tokenizer/" + "g" * 150, b"x"))),
    Case("global pax comment (git archive)", "",
         lambda o: Hostile(segments=[(pax(rec(b"comment", b"0" * 40), b"g"), 1)])),
]
