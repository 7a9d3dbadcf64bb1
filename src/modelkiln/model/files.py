"""Reading the JSON files a bundle is built from, so that no file, however broken, ends in a traceback.

`json.loads` on a path is five ways to crash: a FIFO or `/dev/zero` blocks or fills memory, bytes
that are not UTF-8 raise UnicodeDecodeError, a thousand nested `[` raise RecursionError, and
`null` or a list where an object was meant raise TypeError or AttributeError wherever the value
is used. `read_json` turns each into one `BadFile` whose message names the file (and the line and
column where there is one), and the `expect_*` helpers check the JSON type before anyone indexes it.
Validation (model.convert) and the build stages read inputs through here, so both say the same.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from ..errors import BuildError
from .observe import saw_stat

MAX_JSON_BYTES = 256 << 20  # a tokenizer.json of a large vocabulary is tens of MiB; configs are KiB


class BadFile(ValueError):
    """One readable sentence about what is wrong with an input file, and what to do about it."""

    def __init__(self, message: str, hint: str = ""):
        self.message, self.hint = message, hint
        super().__init__(f"{message}; {hint}" if hint else message)

    def build_error(self) -> BuildError:
        """The same words as a build failure (a stage found it, not validation)."""
        return BuildError(str(self))


def open_regular(path: Path) -> int:
    """A read-only descriptor of `path`, refused unless it is a regular file.

    Opened non-blocking, so a FIFO answers at once instead of waiting for a writer."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        saw_stat(path, None)
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise BadFile(f"{path}: cannot read it ({why})", "check that the file exists and is readable") from None
    try:
        st = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        saw_stat(path, None)
        raise BadFile(f"{path}: cannot read it ({exc.strerror})", "check the file") from None
    saw_stat(path, st)  # what a reused conversion checks again (model.observe)
    mode = st.st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise BadFile(f"{path}: not a regular file", "point at a regular file, not a device, FIFO or directory")
    return fd


def read_bytes(path: Path, limit: int = MAX_JSON_BYTES) -> bytes:
    """A regular file's bytes, at most `limit` of them (more is refused, never read)."""
    fd = open_regular(path)
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read(limit + 1)
    except OSError as exc:
        raise BadFile(f"{path}: cannot read it ({exc.strerror})", "check the file") from None
    finally:
        os.close(fd)
    if len(raw) > limit:
        raise BadFile(f"{path}: over {limit >> 20} MiB", "this file should be small; check it is the right one")
    return raw


def parse_json(raw: bytes, origin: str) -> Any:
    """JSON text -> value; `origin` ("path" or "path:line") names it in every error."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise BadFile(f"{origin}: not UTF-8 (byte 0x{raw[exc.start]:02x} on line {line})",
                      "save the file as UTF-8") from None
    try:
        return json.loads(text[1:] if text.startswith("\ufeff") else text)
    except json.JSONDecodeError as exc:
        raise BadFile(f"{origin}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})",
                      "fix the file's syntax") from None
    except RecursionError:
        raise BadFile(f"{origin}: JSON nested too deeply to read", "flatten the file") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise BadFile(f"{origin}: not valid JSON ({str(exc)[:120]})", "fix the file") from None


def read_json(path: Path, limit: int = MAX_JSON_BYTES, origin: str | None = None) -> Any:
    """Parse one JSON file; `BadFile` (naming the file, line and column) for anything wrong.
    `origin` is how the file is named in messages (default: the path as given)."""
    return parse_json(read_bytes(path, limit), origin or str(path))


def type_name(value: Any) -> str:
    """How a JSON value's type reads in a message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def expect_object(value: Any, what: str, example: str) -> dict[str, Any]:
    """`value` when it is a JSON object, else `BadFile` saying what it is instead."""
    if not isinstance(value, dict):
        raise BadFile(f"{what} must be a JSON object, got {type_name(value)}", f"e.g. {example}")
    return value


def expect_strings(value: Any, what: str, example: str) -> list[str]:
    """`value` when it is a non-empty JSON list of strings, else `BadFile`."""
    if not isinstance(value, list) or not value:
        got = "an empty list" if value == [] else type_name(value)
        raise BadFile(f"{what} must be a non-empty JSON list of strings, got {got}", f"e.g. {example}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise BadFile(f"{what}[{i}] must be a string, got {type_name(item)}", f"e.g. {example}")
    return value


def head_labels(config: Any, origin: str) -> list[str]:
    """The model's output labels in order, from a config.json's `id2label`.

    It must be an object with the keys "0" .. "n-1", each naming a label."""
    cfg = expect_object(config, origin, '{"id2label": {"0": "a", "1": "b"}, ...}')
    raw = cfg.get("id2label")
    if raw is None:
        return []
    id2label = expect_object(raw, f"{origin} id2label", '{"0": "first_label", "1": "second"}')
    labels = []
    for i in range(len(id2label)):
        label = id2label.get(str(i))
        if not isinstance(label, str):
            found = "missing" if label is None else type_name(label)
            raise BadFile(f"{origin} id2label[\"{i}\"] is {found}: id2label must map \"0\"..\"{len(id2label) - 1}\" "
                          "to label names", "save the config with save_pretrained")
        labels.append(label)
    return labels
