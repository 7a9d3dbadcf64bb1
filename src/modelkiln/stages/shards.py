"""Sharded safetensors checkpoints, kept sharded: placed without rewriting, cast tensor by tensor,
checked against their architecture without loading a weight.

Why by hand: safetensors' own writer (`save_file`) takes a whole state dict in memory, and
transformers' `from_pretrained` materialises the whole model. Both make the weights stage's memory
grow with the model. Here every shard is handled on its own and memory stays at one tensor (a
dtype cast) or one 1 MiB buffer (a copy):

- `place` puts a shard into the stage's fresh output directory. When the previous output of the
  stage holds a file with the same content (the stat cache vouches for it without reading), it is
  hard-linked from there: an unchanged shard keeps its inode, nothing is written. Otherwise it is
  cloned (FICLONE, where the filesystem shares extents) or copied by the kernel. The source itself
  is never hard-linked: a checkpoint re-saved in place would change the build output under its
  recorded digest, and the fetch cache refreshes its blobs' mtimes on every use.
- `cast_shard` writes a shard with its floating tensors in another dtype, one tensor at a time,
  in the source's tensor order, with a header laid out as safetensors lays its own (8-byte length,
  JSON padded with spaces to 8 bytes), so the file loads with `safetensors.safe_open`. Its
  header's __metadata__ records the source shard's sha256 and the dtype (`CAST_FROM`, `CAST_TO`),
  so the next run links it from the previous output when that source shard did not change
  (`cast_or_link`): a cast checkpoint, too, rewrites only the shard that changed.
- `check_keys` builds the architecture from config.json on torch's meta device (no storage) and
  compares names and shapes with the shards' headers; tied weights (one parameter under two names)
  may be missing, as `save_pretrained` leaves them out. Anything it cannot match exactly is handed
  to the full loader, whose message names the keys (and whose memory grows with the model: only a
  checkpoint that would fail, or needs transformers' key renames, pays that).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..artifacts.digest import StatCache
from ..errors import BuildError
from ..model.files import BadFile, read_json

FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
_TORCH_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
_ST_TO_TORCH = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
                "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
_FLOATS = frozenset({"F64", "F32", "F16", "BF16"})
CAST_FROM, CAST_TO = "modelkiln.cast_from_sha256", "modelkiln.cast_to"  # a cast shard's header
_SIZES = {"F32": 4, "F16": 2, "BF16": 2}


def place(src: Path, dst: Path, previous: Path | None, cache: StatCache) -> str:
    """Put `src` at `dst`; returns how: "linked" (the previous output's inode), "cloned" or
    "copied". `previous` is the same name in the stage's last output directory."""
    digest = cache.digest(src)  # the up-to-date check hashed it already: a stat lookup
    if previous is not None and cache.peek(previous) == digest:
        try:
            os.link(previous, dst)
            cache.remember(dst, digest)  # linking changed the inode's ctime: vouch for it again
            return "linked"
        except OSError:
            pass  # another filesystem, or links not allowed: fall back to a fresh copy
    how = _clone_or_copy(src, dst)
    cache.remember(dst, digest)
    return how


def _clone_or_copy(src: Path, dst: Path) -> str:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        try:
            fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
            return "cloned"
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL,
                                 errno.ENOSYS, errno.EBADF, errno.EPERM):
                raise
    shutil.copyfile(src, dst)  # sendfile on Linux: the kernel moves the bytes, no Python buffer
    return "copied"


def read_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (already checked by `check_header`)."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header: dict[str, Any] = json.loads(f.read(length))
    return header


def tensor_shapes(shards: Iterable[Path]) -> dict[str, tuple[str, tuple[int, ...], str]]:
    """tensor name -> (dtype, shape, shard file name) over every shard, from headers only."""
    found: dict[str, tuple[str, tuple[int, ...], str]] = {}
    for shard in shards:
        for name, entry in read_header(shard).items():
            if name == "__metadata__":
                continue
            if name in found:
                raise BuildError(f"{shard}: tensor '{name}' is also in {found[name][2]}; re-save "
                                 "the checkpoint with save_pretrained")
            found[name] = (entry["dtype"], tuple(entry["shape"]), shard.name)
    return found


def check_index(index: Path, tensors: dict[str, tuple[str, tuple[int, ...], str]]) -> None:
    """The index's weight_map must name exactly the tensors the shards hold, each in its shard."""
    try:
        weight_map = read_json(index, origin=str(index))["weight_map"]
    except (BadFile, KeyError, TypeError):
        raise BuildError(f"{index}: no readable weight_map; re-save the checkpoint") from None
    wrong = sorted(n for n, s in weight_map.items() if n not in tensors or tensors[n][2] != s)
    unlisted = sorted(set(tensors) - set(weight_map))
    if wrong or unlisted:
        name = (wrong or unlisted)[0]
        where = tensors[name][2] if name in tensors else "no shard"
        raise BuildError(f"{index}: weight_map says '{name}' is in "
                         f"{weight_map.get(name, 'no shard')}, the headers say {where} "
                         f"({len(wrong) + len(unlisted)} such); re-save the checkpoint")


def cast_or_link(src: Path, dst: Path, dtype: str, previous: Path, cache: StatCache) -> str:
    """`cast_shard`, or a hard link to the previous output's shard when that was cast from the
    same bytes to the same dtype (its header says so, `CAST_FROM`/`CAST_TO`) and is unchanged
    since (the stat cache vouches for it); returns "cast" or "linked"."""
    digest = cache.digest(src)
    known = cache.peek(previous)
    if known is not None:
        try:
            meta = read_header(previous).get("__metadata__") or {}
            if meta.get(CAST_FROM) == digest and meta.get(CAST_TO) == dtype:
                os.link(previous, dst)
                cache.remember(dst, known)
                return "linked"
        except (OSError, ValueError, struct.error):
            pass  # unreadable or on another filesystem: cast afresh
    cast_shard(src, dst, dtype, {CAST_FROM: digest, CAST_TO: dtype})
    return "cast"


def data_size(path: Path) -> int:
    """Bytes of tensor data in a safetensors file (its size less the length and header)."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return os.fstat(f.fileno()).st_size - 8 - int(length)


def cast_shard(src: Path, dst: Path, dtype: str, note: dict[str, str] | None = None) -> int:
    """Write `src` to `dst` with every floating tensor cast to `dtype` (float32, float16,
    bfloat16), one tensor in memory at a time; returns the bytes of tensor data written.
    `note` joins the header's __metadata__."""
    import torch
    from safetensors import safe_open

    header = read_header(src)
    meta = {**(header.pop("__metadata__", None) or {"format": "pt"}), **(note or {})}
    want = _TORCH_DTYPES[dtype]
    order = sorted(header, key=lambda n: header[n]["data_offsets"][0])
    out: dict[str, Any] = {"__metadata__": meta}
    cursor = 0
    for name in order:
        entry = header[name]
        st = want if entry["dtype"] in _FLOATS else entry["dtype"]
        size = entry["data_offsets"][1] - entry["data_offsets"][0]
        if st != entry["dtype"]:
            count = size // {"F64": 8, **_SIZES}[entry["dtype"]]
            size = count * _SIZES[st]
        out[name] = {"dtype": st, "shape": entry["shape"], "data_offsets": [cursor, cursor + size]}
        cursor += size
    text = json.dumps(out, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    target = getattr(torch, dtype)
    with safe_open(str(src), framework="pt") as reader, open(dst, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for name in order:
            t = reader.get_tensor(name)
            if t.is_floating_point() and t.dtype != target:
                t = t.to(target)
            raw = t.contiguous().reshape(-1).view(torch.uint8).numpy()
            f.write(memoryview(raw))
            del t, raw
    return cursor


def check_keys(out: Path, tensors: dict[str, tuple[str, tuple[int, ...], str]],
               auto_class: str | None, full_check: Callable[[], None]) -> str:
    """Do the shards' tensors fit the architecture of `out/config.json`? Checked on the meta
    device; where names or shapes do not match exactly, `full_check` (the loader) decides.
    Returns "meta" or "loaded": which check answered."""
    import torch
    import transformers

    loader = getattr(transformers, auto_class or "AutoModelForSequenceClassification")
    try:
        config = transformers.AutoConfig.from_pretrained(str(out))
        with torch.device("meta"):
            model = loader.from_config(config)
    except Exception:
        full_check()  # its message names what is wrong with config.json
        return "loaded"
    model.tie_weights()
    params = dict(model.state_dict(keep_vars=True).items())
    aliases: dict[int, list[str]] = {}
    for name, p in params.items():
        aliases.setdefault(id(p), []).append(name)
    missing = [n for n in params if n not in tensors
               and not any(a in tensors for a in aliases[id(params[n])])]
    unexpected = [n for n in tensors if n not in params]
    shapes = [n for n in tensors if n in params and tuple(params[n].shape) != tensors[n][1]]
    if missing or unexpected or shapes:
        full_check()  # renamed keys transformers maps itself, or a real mismatch it names
        return "loaded"
    return "meta"
