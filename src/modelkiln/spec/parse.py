"""YAML (or JSON) bytes -> plain data, the position of every node, and every problem found.

Why not `yaml.safe_load`: it loses positions, silently keeps the last of two duplicate keys, expands
aliases (an alias bomb is a few lines), and resolves YAML 1.1 scalars (`yes` -> True, `1e-4` -> a
string, `2024-01-01` -> a date). We walk libyaml's event stream instead and build the data ourselves:
- plain scalars resolve by the YAML 1.2 core schema (JSON-compatible: null, bool, int, float, str);
  mapping keys are always their text;
- only the standard tags (!!str !!int !!float !!bool !!null !!seq !!map) are accepted, so no tag
  can ever construct an object;
- anchors and aliases are refused where they stand, so nothing is ever expanded;
- a duplicate key is reported at its second occurrence; the first value is kept.
Events rather than the composer's node graph because an alias event carries its own position and an
explicit tag is distinguishable from a resolved one; the walk is iterative, so deep nesting cannot
overflow the Python stack. `yaml` is imported on first use: a cache hit never needs it.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from modelkiln.spec.document import KeyPath, Mark, key_text

MAX_BYTES = 1 << 20  # specs describe a bundle; anything larger is a mistake (or an attack)
MAX_DEPTH = 50  # nesting levels; a spec uses about five
MAX_PROBLEMS = 200  # per file: past this a report helps nobody, and memory stays bounded

_STD = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_STD + t for t in ("str", "int", "float", "bool", "null")}
_NULL = re.compile(r"^(~|null|Null|NULL|)$")
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT = re.compile(r"^[-+]?[0-9]+$")
_INT_OCT = re.compile(r"^0o[0-7]+$")
_INT_HEX = re.compile(r"^0x[0-9a-fA-F]+$")
_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_SPECIAL_FLOAT = re.compile(r"^([-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN))$")
# What an explicit standard tag promises about the plain value: `!!float 1` is a float.
_TAG_TYPES: dict[str, type | tuple[type, ...]] = {
    "int": int, "float": (int, float), "bool": bool, "null": type(None)}
_NOT_PLAIN = "only plain YAML is accepted: text, numbers, booleans, null, lists and mappings"


@dataclass
class Parsed:
    """Result of parsing one file. `fatal` means the data must not be validated further."""

    data: Any = None
    marks: dict[KeyPath, Mark] = field(default_factory=dict)
    key_marks: dict[KeyPath, Mark] = field(default_factory=dict)
    problems: list[tuple[Mark, str, str, str]] = field(default_factory=list)  # (mark, key, msg, hint)
    fatal: bool = False

    def add(self, mark: Mark, key_path: KeyPath, message: str, hint: str = "", fatal: bool = True) -> None:
        self.problems.append((mark, key_text(key_path), message, hint))
        self.fatal = self.fatal or fatal


@dataclass
class _Frame:
    """An open mapping or sequence. `record` is False inside a value we are discarding (the second
    of two duplicate keys), whose marks must not overwrite the kept value's."""

    value: dict[str, Any] | list[Any]
    path: KeyPath
    record: bool
    key: str | None = None
    key_ok: bool = True  # False when the pending key is a duplicate or not text


def decode(raw: bytes, parsed: Parsed) -> str | None:
    """UTF-8 text of `raw`, or None after recording where the first bad byte is."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        start = exc.start
        parsed.add(_byte_mark(raw, start), (),
                   f"file is not valid UTF-8 (byte 0x{raw[start]:02x})", "save the file as UTF-8")
        return None
    return text[1:] if text.startswith("\ufeff") else text


def too_big(size: int) -> tuple[str, str]:
    """Message and hint for a file over `MAX_BYTES` (checked before reading, and again on bytes)."""
    return (f"file is {size} bytes, over the {MAX_BYTES >> 20} MiB limit for a spec",
            "keep large data in separate files that the spec points to")


def _byte_mark(raw: bytes, offset: int) -> Mark:
    """1-based (line, col) of a byte offset, counting columns in characters."""
    line_start = raw.rfind(b"\n", 0, offset) + 1
    return raw.count(b"\n", 0, offset) + 1, len(raw[line_start:offset].decode("utf-8", "replace")) + 1


def parse_bytes(raw: bytes) -> Parsed:
    """Parse one document's bytes; never raises for anything in the bytes."""
    parsed = Parsed()
    if len(raw) > MAX_BYTES:
        parsed.add((1, 1), (), *too_big(len(raw)))
        return parsed
    text = decode(raw, parsed)
    if text is None:
        return parsed
    import yaml  # deferred: ~25 ms, and only needed on a cache miss

    fast = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    retry = _parse_text(text, parsed, fast)
    if retry:  # libyaml refuses the \ud83d\ude00 escapes json.dumps writes: read them in Python
        parsed = Parsed()
        _parse_text(text, parsed, yaml.SafeLoader)
    if not parsed.fatal and not isinstance(parsed.data, dict):
        if parsed.data is None:
            parsed.add((1, 1), (), "file is empty; expected a mapping of keys to values")
        else:
            parsed.add((1, 1), (), f"top level must be a mapping, got {describe(parsed.data)}",
                       "write `key: value` lines at the top level")
    parsed.marks[()] = (1, 1)
    return parsed


def _parse_text(text: str, parsed: Parsed, loader: Any) -> bool:
    """Walk `text`'s events into `parsed`. True when libyaml refused a surrogate-pair escape,
    which the pure-Python scanner reads (as two surrogates that `_text` joins)."""
    import yaml

    builder = _Builder(parsed)
    try:
        builder.run(yaml.parse(text, Loader=loader))
    except yaml.MarkedYAMLError as exc:
        if loader is not yaml.SafeLoader and "invalid Unicode character escape" in str(exc.problem):
            return True
        mark = exc.problem_mark or exc.context_mark
        where = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        hint = ""
        if exc.context and exc.context_mark:
            hint = f"{exc.context} that starts at line {exc.context_mark.line + 1}"
        parsed.add(where, builder.current_path(), f"invalid YAML: {exc.problem}", hint)
    except yaml.reader.ReaderError as exc:
        where = _char_mark(text, exc.position)
        parsed.add(where, (), f"invalid YAML: character #x{exc.character:04x} is not allowed",
                   "remove the control character")
    except yaml.YAMLError as exc:  # anything else libyaml can raise: still a problem, not a traceback
        parsed.add((1, 1), (), f"invalid YAML: {exc}")
    return False


def _char_mark(text: str, offset: int) -> Mark:
    """1-based (line, col) of a character offset."""
    line_start = text.rfind("\n", 0, offset) + 1
    return text.count("\n", 0, offset) + 1, offset - line_start + 1


def _text(value: str) -> tuple[str, str]:
    """(value with UTF-16 surrogate pairs joined, error or ""): a lone surrogate is not text."""
    if not any("\ud800" <= ch <= "\udfff" for ch in value):
        return value, ""
    try:
        return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le"), ""
    except UnicodeDecodeError:
        return "", "escape of a lone UTF-16 surrogate (\\ud800-\\udfff) is not text"


def describe(value: Any) -> str:
    """How a value reads in a message: `'latest'`, `17`, `true`, `null`, `a list`, `a mapping`."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "'" + (value if len(value) <= 60 else value[:57] + "...") + "'"
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"


def show_tag(tag: str) -> str:
    """`tag:yaml.org,2002:python/object` -> `!!python/object`, as the user wrote it."""
    return "!!" + tag[len(_STD):] if tag.startswith(_STD) else tag


def _resolve_plain(text: str) -> Any:
    """A plain (unquoted, untagged) scalar by the YAML 1.2 core schema."""
    if _NULL.match(text):
        return None
    if text in _BOOL:
        return _BOOL[text]
    if _INT.match(text):
        return int(text)
    if _INT_OCT.match(text):
        return int(text[2:], 8)
    if _INT_HEX.match(text):
        return int(text[2:], 16)
    if _FLOAT.match(text) or _SPECIAL_FLOAT.match(text):
        return float(text.replace(".inf", "inf").replace(".Inf", "inf").replace(".INF", "inf")
                     .replace(".nan", "nan").replace(".NaN", "nan").replace(".NAN", "nan"))
    return text


def _clip(text: str) -> str:
    return text if len(text) <= 40 else f"{text[:37]}..."


def _scalar(tag: str | None, plain: bool, text: str) -> tuple[Any, str, str]:
    """(value, error message or "", hint) for one scalar event."""
    try:
        return _typed_scalar(tag, plain, text)
    except ValueError:  # an integer of more digits than Python will convert (4300)
        return None, f"'{_clip(text)}' has {len(text)} digits, too many for a number", "write a smaller number"


def _typed_scalar(tag: str | None, plain: bool, text: str) -> tuple[Any, str, str]:
    value: Any  # a JSON scalar: None, bool, int, float or str
    if tag is None or tag == "!":
        value = _resolve_plain(text) if plain and tag is None else text
    elif tag not in _SCALAR_TAGS:
        return None, f"tag {show_tag(tag)} is not allowed", _NOT_PLAIN
    elif tag == _STD + "str":
        value = text
    else:
        value = _resolve_plain(text)
        kind = _TAG_TYPES[tag[len(_STD):]]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return None, f"'{_clip(text)}' is not a valid {show_tag(tag)} value", "fix the value or drop the tag"
        if tag == _STD + "float" and isinstance(value, (int, float)):  # always so, past the check
            value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None, f"'{_clip(text)}' is not a finite number", "JSON has no infinity or NaN; write a number"
    return value, "", ""


class _Builder:
    """Consumes libyaml events and fills a `Parsed`; one instance per document."""

    def __init__(self, parsed: Parsed):
        self.parsed = parsed
        self.stack: list[_Frame] = []
        self.documents = 0

    def current_path(self) -> KeyPath:
        """Path of the node being read when an error struck (for syntax-error messages)."""
        if not self.stack:
            return ()
        top = self.stack[-1]
        if isinstance(top.value, dict):
            return top.path + (top.key,) if top.key is not None else top.path
        return top.path + (len(top.value),)

    def run(self, events: Iterable[Any]) -> None:
        import yaml

        for event in events:
            mark = (event.start_mark.line + 1, event.start_mark.column + 1)
            if len(self.parsed.problems) >= MAX_PROBLEMS:
                self.parsed.add(mark, (), f"stopped reading after {MAX_PROBLEMS} problems", "fix those first")
                return
            if isinstance(event, yaml.DocumentStartEvent):
                self.documents += 1
                if self.documents > 1:
                    self.parsed.add(mark, (), "found a second YAML document (`---`); a spec is one document",
                                    "split it into separate files")
                    return
            elif isinstance(event, yaml.ScalarEvent):
                self._check_anchor(event, mark)
                text, bad = _text(event.value)
                value, error, hint = _scalar(event.tag, event.implicit[0], text)
                if bad:
                    value, error, hint = None, bad, "write the character itself, or a valid pair"
                self._node(value, mark, error, key_text=text, hint=hint)
            elif isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                if len(self.stack) >= MAX_DEPTH:  # key paths grow with depth: cap the quadratic cost
                    self.parsed.add(mark, self.current_path(), f"nested more than {MAX_DEPTH} levels deep",
                                    "a spec needs a handful of levels; flatten the structure")
                    return
                self._check_anchor(event, mark)
                is_map = isinstance(event, yaml.MappingStartEvent)
                allowed = (None, "!", _STD + ("map" if is_map else "seq"))
                error = "" if event.tag in allowed else f"tag {show_tag(event.tag)} is not allowed"
                container: dict[str, Any] | list[Any] = {} if is_map else []
                path, record = self._node(container, mark, error, key_text=None, hint=_NOT_PLAIN)
                self.stack.append(_Frame(container, path, record))
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                self.stack.pop()
            elif isinstance(event, yaml.AliasEvent):
                self._node(None, mark, f"alias *{event.anchor} is not allowed", key_text=f"*{event.anchor}",
                           hint="write the value out in full; anchors and aliases are not supported")

    def _check_anchor(self, event: Any, mark: Mark) -> None:
        if event.anchor is not None:
            self.parsed.add(mark, self.current_path(), f"anchor &{event.anchor} is not allowed",
                            "write values out in full; anchors and aliases are not supported")

    def _node(self, value: Any, mark: Mark, error: str, key_text: str | None,
              hint: str = "") -> tuple[KeyPath, bool]:
        """Place one node under the open container; returns its path and whether it is recorded."""
        if not self.stack:
            if error:
                self.parsed.add(mark, (), error, hint)
            self.parsed.data = value
            return (), True
        top = self.stack[-1]
        if isinstance(top.value, dict):
            if top.key is None:
                return self._key(top, mark, error, key_text, hint), False
            path, keep = top.path + (top.key,), top.key_ok
            if keep:
                top.value[top.key] = value
            top.key, top.key_ok = None, True
        else:
            path, keep = top.path + (len(top.value),), True
            top.value.append(value)
        record = top.record and keep
        if error:
            self.parsed.add(mark, path, error, hint)
        if record:
            self.parsed.marks[path] = mark
        return path, record

    def _key(self, top: _Frame, mark: Mark, error: str, key_text: str | None, hint: str) -> KeyPath:
        """Take a mapping key: it must be a scalar and must not repeat."""
        if key_text is None:  # a list or mapping used as a key
            self.parsed.add(mark, top.path, "mapping keys must be plain text, not a list or mapping")
            # The matching end event will pop a frame pushed for the bad key; its value is dropped.
            top.key, top.key_ok = "\0", False
            return top.path + ("\0",)
        path = top.path + (key_text,)
        if error:
            self.parsed.add(mark, path, error, hint)
        top.key = key_text
        assert isinstance(top.value, dict)
        if key_text in top.value:
            first = self.parsed.key_marks.get(path, mark)
            where = f"line {first[0]}" if top.record else "an earlier line"
            self.parsed.add(mark, path, f"duplicate key '{key_text}', first defined on {where}",
                            "remove one of them; the first value is kept", fatal=False)
            top.key_ok = False
        elif top.record:
            self.parsed.key_marks[path] = mark
        return path
