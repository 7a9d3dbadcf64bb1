"""The public entry points: spec files in, validated `SpecDocument`s out, or one `SpecError`.

Every problem of every file is collected before raising, so a reviewer sees the whole list at once,
sorted, one line each. Parse problems that leave the data unusable (syntax, encoding, forbidden tags,
aliases) stop that file before schema validation, whose errors would only be noise; a duplicate key
does not, since the first value is kept and the rest of the file is still worth checking.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from modelkiln.artifacts.digest import StatCache
from modelkiln.errors import Problem, SpecError, display_path
from modelkiln.spec.cache import DocumentCache
from modelkiln.spec.document import SpecDocument


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
        doc = cache.lookup(path, schema) if cache is not None else None
        if doc is None:
            doc, found = _load_fresh(path, schema, cache)
            problems.extend(found)
        docs.append(doc)
    if cache is not None:
        cache.save()
    if problems:
        raise SpecError(problems)
    return docs


def _load_fresh(path: Path, schema: str, cache: DocumentCache | None) -> tuple[SpecDocument, list[Problem]]:
    """Read, parse and validate one file; store it in the cache when it has no problems."""
    from modelkiln.spec.parse import MAX_BYTES, parse_bytes, too_big  # not needed on a cache hit

    file = display_path(path)
    try:
        size = os.stat(path).st_size
        if size > MAX_BYTES:  # refuse before reading a byte of it
            problem = Problem(file, 1, 1, "", *too_big(size))
            return SpecDocument(path, None, {(): (1, 1)}), [problem]
        raw = path.read_bytes()
    except OSError as exc:
        problem = Problem(file, 1, 1, "", f"cannot read file: {exc.strerror or exc}", "check the path")
        return SpecDocument(path, None, {(): (1, 1)}), [problem]
    parsed = parse_bytes(raw)
    doc = SpecDocument(path, parsed.data, parsed.marks, parsed.key_marks)
    problems = [Problem(file, line, col, key, message, hint)
                for (line, col), key, message, hint in parsed.problems]
    if not parsed.fatal:
        from modelkiln.spec.validate import schema_problems

        problems.extend(schema_problems(doc, schema))
    if cache is not None and not problems:
        cache.store(raw, doc, schema)
    return doc, problems
