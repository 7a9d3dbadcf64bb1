"""Finding the JSON Schemas that ship with modelkiln, and their digests.

A wheel carries them as `modelkiln/_schema/<name>.schema.json` (pyproject force-includes the
repository's `schema/` there); an editable install reads the repository's `schema/` directly. One
function decides, so the validator and the document cache always agree on which bytes they used.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from modelkiln.artifacts.digest import sha256_bytes

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # .../modelkiln
_REPO_SCHEMA_DIR = _PACKAGE_DIR.parents[1] / "schema"  # src/modelkiln -> repository root (editable install)


@lru_cache(maxsize=None)
def schema_bytes(name: str) -> bytes:
    """Raw bytes of schema `name` ("bundle" -> bundle.schema.json), packaged copy first."""
    if not _NAME.match(name):
        raise ValueError(f"bad schema name {name!r}: expected lowercase letters, digits, - or _")
    filename = f"{name}.schema.json"
    on_disk = _PACKAGE_DIR / "_schema" / filename  # an installed wheel: skip importlib.resources' ~8 ms
    if on_disk.is_file():
        return on_disk.read_bytes()
    from importlib.resources import files

    packaged = files("modelkiln").joinpath("_schema", filename)  # a zipped install
    if packaged.is_file():
        return packaged.read_bytes()
    repo = _REPO_SCHEMA_DIR / filename
    if repo.is_file():
        return repo.read_bytes()
    raise FileNotFoundError(f"schema {filename} is neither packaged (modelkiln/_schema/) nor in {_REPO_SCHEMA_DIR}")


@lru_cache(maxsize=None)
def schema_digest(name: str) -> str:
    """sha256 of the schema's bytes: part of every cached document's key."""
    return sha256_bytes(schema_bytes(name))


def load_schema(name: str) -> dict[str, Any]:
    """The schema as a fresh dict (callers may not share and mutate one copy)."""
    value = json.loads(schema_bytes(name))
    if not isinstance(value, dict):
        raise ValueError(f"schema {name} is not a JSON object")
    return value
