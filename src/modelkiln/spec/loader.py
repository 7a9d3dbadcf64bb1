"""The public entry points: spec files in, validated `SpecDocument`s out, or one `SpecError`.

Every problem of every file is collected before raising, so a reviewer sees the whole list at once,
sorted, one line each. Parse problems that leave the data unusable (syntax, encoding, forbidden tags,
aliases) stop that file before schema validation, whose errors would only be noise; a duplicate key
does not, since the first value is kept and the rest of the file is still worth checking.
"""
from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modelkiln.artifacts.digest import StatCache
from modelkiln.errors import Problem, SpecError, display_path
from modelkiln.spec.cache import DocumentCache
from modelkiln.spec.document import SpecDocument, one_line


def load_document(path: Path, schema: str = "bundle", *, cache_dir: Path | None = None,
                  stat_cache: StatCache | None = None) -> SpecDocument:
    """Parse and schema-check one file; raise `SpecError` with all of its problems.

    With `cache_dir` (or a `stat_cache`, whose directory is then used), a file whose bytes were
    validated before is returned from the cache without importing yaml or jsonschema.
    """
    return load_documents([path], schema, cache_dir=cache_dir, stat_cache=stat_cache)[0]


def load_documents(paths: Sequence[Path], schema: str = "bundle", *, cache_dir: Path | None = None,
                   stat_cache: StatCache | None = None) -> list[SpecDocument]:
    """Load every file (in the given order); one `SpecError` with every problem of every file."""
    cache = DocumentCache(cache_dir, stat_cache) if cache_dir is not None or stat_cache is not None else None
    docs: list[SpecDocument] = []
    problems: list[Problem] = []
    for given in paths:
        path = Path(given)
        refusal = _not_regular(path)  # a stat, no read: the cache hashes the file, so check first
        doc = cache.lookup(path, schema) if cache is not None and refusal is None else None
        if doc is None:
            raw, refusal = (None, refusal) if refusal else read_spec_bytes(path)
            if raw is None:
                doc = SpecDocument(path, None, {(): (1, 1)})
                problems.append(refusal or Problem(_shown(path), 1, 1, "", "cannot read file"))
            else:
                doc, found = _load_fresh(path, raw, schema, cache)
                problems.extend(found)
        docs.append(doc)
    if cache is not None:
        cache.save()
    if problems:
        raise SpecError(problems)
    return docs


def _shown(path: Path) -> str:
    return one_line(display_path(path))


def _not_regular(path: Path) -> Problem | None:
    """The problem with a path that is not a readable regular file, from a stat alone."""
    try:
        st = os.stat(path)
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return Problem(_shown(path), 1, 1, "", one_line(f"cannot read file: {why}"), "check the path")
    return None if stat.S_ISREG(st.st_mode) else _irregular(path)


def _irregular(path: Path) -> Problem:
    return Problem(_shown(path), 1, 1, "", "not a regular file (a device, FIFO, socket or directory)",
                   "name a .yaml spec file")


def read_spec_bytes(path: Path) -> tuple[bytes | None, Problem | None]:
    """The file's bytes, or the one problem that stops it being read.

    Opened without blocking and checked to be a regular file *before* a byte is read, so a FIFO,
    a socket or `/dev/zero` is refused at once instead of hanging or filling memory; then read
    at most `MAX_BYTES` + 1 bytes, so a file that grows while it is read is still bounded.
    """
    from modelkiln.spec.parse import MAX_BYTES, too_big

    file = _shown(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return None, Problem(file, 1, 1, "", one_line(f"cannot read file: {why}"), "check the path")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, _irregular(path)
        if st.st_size > MAX_BYTES:  # refuse before reading a byte of it
            return None, Problem(file, 1, 1, "", *too_big(st.st_size))
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(MAX_BYTES + 1), None  # parse_bytes refuses the one byte too many
    except OSError as exc:
        return None, Problem(file, 1, 1, "", one_line(f"cannot read file: {exc.strerror or exc}"),
                             "check the path")
    finally:
        os.close(fd)


def _load_fresh(path: Path, raw: bytes, schema: str,
                cache: DocumentCache | None) -> tuple[SpecDocument, list[Problem]]:
    """Parse and validate one file's bytes; store it in the cache when it has no problems."""
    from modelkiln.spec.parse import parse_bytes  # not needed on a cache hit

    file = _shown(path)
    parsed = parse_bytes(raw)
    doc = SpecDocument(path, parsed.data, parsed.marks, parsed.key_marks)
    problems = [Problem(file, line, col, one_line(key), one_line(message), one_line(hint))
                for (line, col), key, message, hint in parsed.problems]
    if not parsed.fatal:
        from modelkiln.spec.validate import schema_problems

        problems.extend(schema_problems(doc, schema))
    if cache is not None and not problems:
        cache.store(raw, doc, schema)
    return doc, problems


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def spec_name(path: Path) -> str | None:
    """The `name:` a spec gives its bundle, read as leniently as possible (the spec may be invalid
    in any other way), or None when it has no usable one. Lets a broken spec's tasks keep the name
    a user types (`doit build:<name>`) so they fail with the spec's problems, not 'no such task'."""
    data = spec_data(path)
    name = data.get("name") if data is not None else None
    return name if isinstance(name, str) and _NAME.match(name) else None


def spec_data(path: Path) -> dict[str, Any] | None:
    """A spec's top-level mapping, parsed without validating it (None when it cannot be read or
    is not a mapping): what a broken spec's placeholder tasks are named from."""
    from modelkiln.spec.parse import parse_bytes

    raw, refusal = read_spec_bytes(path)
    if raw is None or refusal is not None:
        return None
    data = parse_bytes(raw).data
    return data if isinstance(data, dict) else None
