"""Read the members of an untrusted tar stream in bounded time and memory.

Why hand-written rather than `tarfile`: on the Python 3.11 this project runs on, `tarfile` parses
a pax extended header with a backtracking regular expression that is quadratic in a run of digits
(40,000 digits: 7 s; 1 MiB: hours), reads a whole pax header into memory whatever size it declares
(a 200 MiB record cost 620 MiB before anything could refuse it), expands GNU sparse maps from pax
records into memory, and raises UnicodeDecodeError or ValueError on an odd `hdrcharset` or
non-numeric sparse fields. A library cannot be told "refuse this header before you parse it", and
no maintained streaming tar reader offers that either, so this module reads the subset a bundle
uses itself: ustar and GNU headers, pax extended records, GNU long names. Each step is linear in
the bytes it reads, and nothing is read past a cap:

- a pax header (per member or global) larger than PAX_CAP, or a GNU long name or link larger than
  LONGNAME_CAP, is refused from the size in its own header, before its content is read;
- a pax record is parsed with find() and int() on a length field of at most 7 digits;
- every sparse form (GNU type 'S', any `GNU.sparse.*` pax key) and any `hdrcharset` other than
  UTF-8 is refused; names must be valid UTF-8;
- at most one pax header, one long name and one long link precede a member, at most GLOBALS_CAP
  global headers per archive, and at most TRAILER_CAP zero bytes follow the end-of-archive marker.

The reader only parses. What may be written (types, names, sizes, budgets) is `extract`'s call;
whatever the reader cannot parse it raises as BadTar, naming the member as far as it is known.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

BLOCK = 512
PAX_CAP = 64 << 10
LONGNAME_CAP = 4 << 10
GLOBALS_CAP = 16
TRAILER_CAP = 2 << 20
_PAX_LENGTH_DIGITS = 7  # a record is at most PAX_CAP bytes long: 5 digits would do
_UTF8 = b"ISO-IR 10646 2000 UTF-8"
_POSIX_MAGIC, _GNU_MAGIC = b"ustar\x0000", b"ustar  \x00"

DIR_TYPE = b"5"
_EXTENDED = {b"x": "pax header", b"g": "global pax header", b"L": "GNU long name",
             b"K": "GNU long link"}


class BadTar(Exception):
    """A header this reader will not parse; `member` names what it belonged to, if known."""

    def __init__(self, why: str, member: str = "<archive>"):
        super().__init__(why)
        self.why, self.member = why, member


@dataclass(frozen=True)
class Member:
    """One archive member as its headers describe it (pax and GNU long names applied)."""

    name: str
    type: bytes  # the one-byte tar type flag; b"0" for every regular file, b"5" for a directory
    size: int  # bytes of data that follow the header
    linkname: str

    def isfile(self) -> bool:
        return self.type == b"0"

    def isdir(self) -> bool:
        return self.type == DIR_TYPE


@dataclass
class _Extended:
    """What the extended headers before one member said."""

    pax: dict[str, bytes] | None = None
    longname: bytes | None = None
    longlink: bytes | None = None

    def label(self, fallback: str) -> str:
        raw = (self.pax or {}).get("path") or self.longname
        return raw.decode("utf-8", "backslashreplace") if raw else fallback


class TarReader:
    """Members of the tar stream behind `read(n)` (returns up to n bytes, b"" at its end)."""

    def __init__(self, read: Callable[[int], bytes]):
        self._read = read
        self.offset = 0  # bytes of the tar stream consumed so far
        self._left = 0  # data bytes of the current member not yet read
        self._pad = 0  # padding after them
        self._globals = 0

    def next(self) -> Member | None:
        """The next member, or None after the end-of-archive marker (and its padding)."""
        self._skip(self._left + self._pad)
        self._left = self._pad = 0
        ext = _Extended()
        while True:
            at = self.offset
            block = self._block(ext.label(f"<header at byte {at}>"))
            if block is None:
                if ext.pax is not None or ext.longname is not None or ext.longlink is not None:
                    raise BadTar("extended header with no member after it",
                                 ext.label("<end of archive>"))
                self._trailer()
                return None
            member = self._member(block, ext, at)
            if member is not None:
                self._left, self._pad = member.size, -member.size % BLOCK
                return member

    def read(self, n: int) -> bytes:
        """Up to `n` bytes of the current member's data (b"" once it is all read)."""
        if not self._left:
            return b""
        data = self._read(min(n, self._left))
        if not data:
            raise BadTar("truncated: the archive ends inside a member's data")
        self._left -= len(data)
        self.offset += len(data)
        return data

    def _member(self, block: bytes, ext: _Extended, at: int) -> Member | None:
        """Apply one header: an extended one is recorded in `ext` (None returned)."""
        kind = block[156:157]
        own = _nts(block[0:100]).decode("utf-8", "backslashreplace")
        if kind in (b"x", b"g", b"L", b"K") or not own:  # the name of a header is not a member's
            own = f"<{_EXTENDED.get(kind, 'header')} at byte {at}>"
        label = ext.label(own)
        _check_sum(block, label)
        posix = block[257:265] == _POSIX_MAGIC
        if not posix and block[257:265] != _GNU_MAGIC:
            raise BadTar("not a ustar, pax or GNU tar header (corrupt archive?)", label)
        size = _number(block[124:136], label)
        if kind in (b"x", b"g"):
            records = _parse_pax(self._content(size, PAX_CAP, "pax header", label), label)
            if kind == b"g":
                self._global(records, label)
            elif ext.pax is not None:
                raise BadTar("two pax headers for one member", label)
            else:
                ext.pax = _check_pax(records, label)
            return None
        if kind in (b"L", b"K"):
            value = _nts(self._content(size, LONGNAME_CAP, "GNU long name", label))
            if (ext.longname if kind == b"L" else ext.longlink) is not None:
                raise BadTar("two GNU long names for one member", label)
            if kind == b"L":
                ext.longname = value
            else:
                ext.longlink = value
            return None
        return _finish(block, ext, kind, size, posix, label)

    def _global(self, records: dict[str, bytes], label: str) -> None:
        self._globals += 1
        if self._globals > GLOBALS_CAP:
            raise BadTar(f"more than {GLOBALS_CAP} global pax headers", label)
        _check_pax(records, label)
        for key in ("path", "linkpath", "size"):
            if key in records:
                raise BadTar(f"a global pax header sets {key!r} for every member", label)

    def _content(self, size: int, cap: int, what: str, label: str) -> bytes:
        """The data of an extended header, refused from its declared size when over `cap`."""
        if size > cap:
            raise BadTar(f"{what} of {size} bytes (at most {cap} are accepted)", label)
        data = self._exact(size, label)
        self._skip(-size % BLOCK)
        return data

    def _block(self, label: str) -> bytes | None:
        """The next header block; None at the end-of-archive marker or a clean end of stream."""
        first = self._read(BLOCK)
        if not first:
            return None  # no marker, but the stream ended between members: tar accepts that
        block = first if len(first) == BLOCK else first + self._exact(BLOCK - len(first), label)
        self.offset += len(first)
        return None if block == bytes(BLOCK) else block

    def _trailer(self) -> None:
        """After the end marker: only zero padding, and not much of it, may follow."""
        seen = 0
        while data := self._read(BLOCK * 64):
            seen += len(data)
            if data.count(0) != len(data):
                raise BadTar("data after the end-of-archive marker", "<end of archive>")
            if seen > TRAILER_CAP:
                raise BadTar(f"more than {TRAILER_CAP} bytes after the end-of-archive marker",
                             "<end of archive>")
        self.offset += seen

    def _exact(self, n: int, label: str) -> bytes:
        parts: list[bytes] = []
        while n:
            piece = self._read(n)
            if not piece:
                raise BadTar("truncated: the archive ends inside a header", label)
            parts.append(piece)
            n -= len(piece)
        data = b"".join(parts)
        self.offset += len(data)
        return data

    def _skip(self, n: int) -> None:
        while n:
            piece = self._read(min(n, 256 << 10))
            if not piece:
                raise BadTar("truncated: the archive ends inside a member")
            n -= len(piece)
            self.offset += len(piece)


def _finish(block: bytes, ext: _Extended, kind: bytes, size: int, posix: bool,
            label: str) -> Member:
    """The member a plain header describes, with its extended headers applied."""
    raw = ext.longname if ext.longname is not None else _nts(block[0:100])
    prefix = _nts(block[345:500]) if posix else b""
    if prefix and ext.longname is None:
        raw = prefix + b"/" + raw
    pax = ext.pax or {}
    raw = pax.get("path", raw)
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadTar("name is not valid UTF-8", label) from None
    link = pax.get("linkpath", ext.longlink if ext.longlink is not None else _nts(block[157:257]))
    if "size" in pax:
        size = _decimal(pax["size"], "pax size", label)
    if kind == b"\0":  # old tars: a regular file, or a directory when the name ends in "/"
        kind = DIR_TYPE if name.endswith("/") else b"0"
    if kind == DIR_TYPE:
        name = name.rstrip("/") or name
        if size:
            raise BadTar(f"directory with {size} bytes of data", label)
    return Member(name=name, type=kind, size=size,
                  linkname=link.decode("utf-8", "backslashreplace"))


def _nts(field: bytes) -> bytes:
    """A NUL-terminated field's bytes."""
    end = field.find(b"\0")
    return field if end < 0 else field[:end]


def _number(field: bytes, label: str) -> int:
    """A numeric header field: octal text, or GNU base-256 for large positive values."""
    if field[0] == 0x80:
        return int.from_bytes(field[1:], "big")
    if field[0] == 0xFF:
        raise BadTar("negative size in header", label)
    text = _nts(field).strip(b" ")
    if text.strip(b"01234567"):
        raise BadTar(f"size field {field!r} is not an octal number", label)
    return int(text or b"0", 8)


def _decimal(value: bytes, what: str, label: str) -> int:
    if not value.isdigit() or not value.isascii() or len(value) > 20:
        shown = value[:40].decode("utf-8", "backslashreplace")
        raise BadTar(f"{what} {shown!r} is not a decimal number", label)
    return int(value)


def _check_sum(block: bytes, label: str) -> None:
    """The header checksum, as unsigned or (old tars) signed byte sums."""
    field = _nts(block[148:156]).strip(b" ")
    if not field or field.strip(b"01234567"):
        raise BadTar("header checksum field is not a number (corrupt archive?)", label)
    unsigned = sum(block) - sum(block[148:156]) + 8 * 32
    signed = unsigned - 256 * sum(1 for b in block[:148] + block[156:] if b >= 128)
    if int(field, 8) not in (unsigned, signed):
        raise BadTar("header checksum mismatch (corrupt archive)", label)


def _parse_pax(data: bytes, label: str) -> dict[str, bytes]:
    """`<length> <key>=<value>\\n` records, linear in len(data); later keys win."""
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(data) and data[pos]:
        space = data.find(b" ", pos, pos + _PAX_LENGTH_DIGITS + 1)
        digits = data[pos:space] if space > pos else b""
        if not digits.isdigit() or not digits.isascii():
            raise BadTar("malformed pax record (no length, or a length field over "
                         f"{_PAX_LENGTH_DIGITS} digits)", label)
        end = pos + int(digits)
        if end > len(data) or end <= space + 1 or data[end - 1] != 0x0A:
            raise BadTar("malformed pax record (its length does not end at a newline)", label)
        key, eq, value = data[space + 1:end - 1].partition(b"=")
        if not eq or not key:
            raise BadTar("malformed pax record (no keyword=value)", label)
        try:
            records[key.decode("utf-8")] = value
        except UnicodeDecodeError:
            raise BadTar("pax keyword is not valid UTF-8", label) from None
        pos = end
    if data[pos:].strip(b"\0"):
        raise BadTar("malformed pax header (bytes after its last record)", label)
    return records


def _check_pax(records: dict[str, bytes], label: str) -> dict[str, bytes]:
    """Refuse sparse maps and non-UTF-8 names; the keys a bundle never needs are ignored."""
    for key in records:
        if key.startswith("GNU.sparse."):
            raise BadTar(f"sparse member (pax key {key!r}); sparse files are not accepted", label)
    charset = records.get("hdrcharset")
    if charset is not None and charset != _UTF8:
        shown = charset[:40].decode("utf-8", "backslashreplace")
        raise BadTar(f"pax hdrcharset {shown!r}: only UTF-8 names are accepted", label)
    return records
