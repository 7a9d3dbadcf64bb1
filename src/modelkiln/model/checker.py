"""The problem collector the cross-field checks share, and the one place they touch the filesystem.

A spec path is the user's text: it may hold a NUL, a component longer than the filesystem allows,
or point through a symlink loop. Every stat and resolve goes through `Checker.path`, which turns
each of those into a problem at the key that named the path instead of an OSError or ValueError.
"""
from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from ..errors import Problem, display_path
from ..sources.uris import is_remote
from .files import BadFile, read_json
from .observe import saw_resolve, saw_stat
from .remote_sources import remote_path

KeyPath = tuple[str | int, ...]  # a node in the spec: ("labels", "order"), ("metadata", 0)
Data = Mapping[str, Any]  # schema-valid spec data: shape is the schema's, meaning is ours
NAME_MAX = 255  # bytes in one path component on every filesystem we build on


class Document(Protocol):
    """What the checks need from a loaded spec (modelkiln.spec.SpecDocument provides it).

    Read-only members, so a frozen dataclass satisfies it; the protocol keeps model/ free of YAML.
    """

    @property
    def path(self) -> Path: ...

    @property
    def data(self) -> Data: ...

    def problem(self, key_path: KeyPath, message: str, hint: str = "", *,
                at_key: bool = False) -> Problem: ...


class Missing:
    """A file that could not be read (its problem is already recorded); distinct from JSON null."""


MISSING = Missing()


def _bad_text(value: str) -> str:
    """Why a path string can never name a file, or ""."""
    if "\x00" in value:
        return "contains a NUL character"
    for part in value.split("/"):
        if len(part.encode("utf-8", "surrogateescape")) > NAME_MAX:
            return f"has a component of {len(part.encode('utf-8', 'surrogateescape'))} bytes, over the " \
                   f"{NAME_MAX}-byte limit of a file name"
    return ""


def kind_of(p: Path) -> str:
    """'dir', 'file', 'other' or 'missing' (never raises: an unreadable place is 'missing')."""
    try:
        st = os.stat(p)
    except (OSError, ValueError):
        saw_stat(p, None)
        return "missing"
    saw_stat(p, st)
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    return "file" if stat.S_ISREG(st.st_mode) else "other"


class Checker:
    def __init__(self, doc: Document, root: Path):
        self.spec = doc.path.resolve()
        saw_resolve(doc.path, self.spec)
        self.doc, self.root, self.base = doc, root, self.spec.parent
        self.problems: list[Problem] = []

    def fail(self, key: KeyPath, message: str, hint: str = "", at_key: bool = False) -> None:
        self.problems.append(self.doc.problem(key, message, hint, at_key=at_key))

    def path(self, key: KeyPath, value: str | None, kind: str) -> Path | None:
        """Resolve a spec path; it must exist, be a `kind` ('file'|'dir') and stay in the project.

        Returns None when there is no usable path (nothing given, or a problem was recorded that
        makes the path meaningless); otherwise the resolved path, even if it is missing."""
        if value is None:
            return None
        if is_remote(value):  # s3:// oci:// hf://: through the lock beside the spec
            return remote_path(self, key, value, kind)
        shown = value if len(value) <= 80 else f"{value[:77]}..."
        bad = _bad_text(value)
        if bad:
            self.fail(key, f"path '{shown}' {bad}", "fix the path (relative to the spec file)")
            return None
        try:
            p = (self.base / value).resolve()
        except (OSError, RuntimeError, ValueError) as exc:  # RuntimeError: a symlink loop
            self.fail(key, f"path '{shown}' cannot be resolved ({exc})", "fix the path or the link")
            return None
        saw_resolve(self.base / value, p)
        try:
            p.relative_to(self.root)
        except ValueError:
            self.fail(key, f"path '{shown}' escapes the project root {self.root}",
                      "keep model inputs inside the repository; use a path relative to the spec")
            return p
        found = kind_of(p)
        if found == "missing":
            self.fail(key, f"'{shown}' does not exist", f"create it, or fix the path (relative to "
                      f"{self.base.name}/); example inputs come from `python -m modelkiln.demo`")
        elif kind == "dir" and found != "dir":
            self.fail(key, f"'{shown}' is not a directory", "point at the checkpoint directory")
        elif kind == "file" and found != "file":
            self.fail(key, f"'{shown}' is not a regular file", "point at a file")
        return p

    def json_file(self, key: KeyPath, path: Path | None) -> Any:
        """The parsed file, or MISSING when it is absent or broken (broken: a problem recorded)."""
        if path is None or kind_of(path) != "file":
            return MISSING
        try:
            return read_json(path, origin=display_path(path))
        except BadFile as exc:
            self.fail(key, exc.message, exc.hint)
            return MISSING
