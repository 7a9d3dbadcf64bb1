"""A safetensors file's header, checked without loading a tensor (and without importing torch).

The format is an 8-byte little-endian header length, a JSON object naming each tensor's dtype,
shape and `[begin, end)` byte range in the data that follows, then the data. A header that lies
(ranges past the end, overlapping, leaving gaps, sizes that disagree with dtype x shape) makes
the safetensors loader fail deep inside with a message that never names the file. Reading the
length and the header is a few KiB, so validation checks every weight file this way, and the
weights stage checks again right before loading. The rules are the ones the safetensors library
itself enforces: ranges sorted by offset must tile the data exactly, with no gap and no overlap.
"""
from __future__ import annotations

import math
import os
import struct
from pathlib import Path
from typing import Any

from .files import BadFile, open_regular, parse_json, type_name

MAX_HEADER = 100 << 20  # the safetensors library's own limit
_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2,
          "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
          "C64": 8}
_HINT = "the file is truncated or was not written by safetensors; re-save it with save_pretrained"


def _read_header(path: Path, name: str) -> tuple[bytes, int]:
    """(header bytes, size of the data section); refuses sizes that cannot hold them."""
    fd = open_regular(path)
    try:
        st = os.fstat(fd)
        with os.fdopen(fd, "rb", closefd=False) as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise BadFile(f"{name}: {st.st_size} bytes, too short for a safetensors header", _HINT)
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER or 8 + length > st.st_size:
                raise BadFile(f"{name}: header length {length} does not fit in the file's "
                              f"{st.st_size} bytes", _HINT)
            header = f.read(length)
    except OSError as exc:
        raise BadFile(f"{name}: cannot read it ({exc.strerror})", "check the file") from None
    finally:
        os.close(fd)
    if len(header) != length:
        raise BadFile(f"{name}: file shrank while its header was read", "retry")
    return header, st.st_size - 8 - length


def _range(name: str, entry: Any, where: str) -> tuple[int, int]:
    """One tensor's checked `[begin, end)` byte range."""
    if not isinstance(entry, dict):
        raise BadFile(f"{where}: tensor '{name}' is {type_name(entry)}, not an object", _HINT)
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in _SIZES:
        raise BadFile(f"{where}: tensor '{name}' has unknown dtype {str(dtype)[:40]!r}", _HINT)
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise BadFile(f"{where}: tensor '{name}' has a bad shape {str(shape)[:60]}", _HINT)
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(type(o) is int and o >= 0 for o in offsets) and offsets[0] <= offsets[1]):
        raise BadFile(f"{where}: tensor '{name}' has bad data_offsets {str(offsets)[:60]}", _HINT)
    begin, end = offsets
    if end - begin != math.prod(shape) * _SIZES[dtype]:
        raise BadFile(f"{where}: tensor '{name}' holds {end - begin} bytes but {dtype} "
                      f"{shape} needs {math.prod(shape) * _SIZES[dtype]}", _HINT)
    return begin, end


def check_header(path: Path, origin: str | None = None) -> int:
    """Check a safetensors file's header against its size; returns the number of tensors.

    Raises `BadFile` naming the file (as `origin`, default the path) and the first lie found."""
    name = origin or str(path)
    header, data_size = _read_header(path, name)
    where = f"{name}: header"
    value = parse_json(header, where)
    if not isinstance(value, dict):
        raise BadFile(f"{where} is {type_name(value)}, not a JSON object", _HINT)
    meta = value.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict)
                                 and all(isinstance(v, str) for v in meta.values())):
        raise BadFile(f"{where}: __metadata__ must map names to strings", _HINT)
    ranges = sorted((_range(tensor, entry, where), tensor) for tensor, entry in value.items())
    cursor, previous = 0, ""
    for (begin, end), tensor in ranges:
        if begin < cursor:
            raise BadFile(f"{where}: tensors '{previous}' and '{tensor}' overlap (bytes {begin}-{cursor})", _HINT)
        if begin > cursor:
            raise BadFile(f"{where}: no tensor holds bytes {cursor}-{begin} (a gap before '{tensor}')", _HINT)
        cursor, previous = end, tensor
    if cursor != data_size:
        if cursor > data_size:
            raise BadFile(f"{name}: tensor '{previous}' ends at byte {cursor} of the data, past "
                          f"its end ({data_size} bytes)", _HINT)
        raise BadFile(f"{name}: {data_size - cursor} bytes after the last tensor belong to none", _HINT)
    return len(ranges)
