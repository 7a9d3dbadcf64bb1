"""Files that ship with modelkiln outside the Python package: schemas and templates.

A wheel carries the repository's `schema/` and `templates/` as `modelkiln/_schema/` and
`modelkiln/_templates/` (pyproject force-includes them); an editable install reads the repository's
folders directly. One function decides, so every reader agrees on which bytes it used.
"""
from __future__ import annotations

import re
from functools import cache
from pathlib import Path

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PACKAGE_DIR = Path(__file__).resolve().parent  # .../modelkiln
_REPO_DIR = _PACKAGE_DIR.parents[1]  # src/modelkiln -> repository root (editable install)
FOLDERS = {"schema": "_schema", "templates": "_templates"}


@cache
def resource_bytes(folder: str, filename: str) -> bytes:
    """Bytes of `<folder>/<filename>`, the packaged copy first, then the repository's."""
    if folder not in FOLDERS or not _NAME.match(filename) or ".." in filename:
        raise ValueError(f"bad resource {folder}/{filename}")
    on_disk = _PACKAGE_DIR / FOLDERS[folder] / filename  # an installed wheel: skip importlib.resources
    if on_disk.is_file():
        return on_disk.read_bytes()
    from importlib.resources import files

    packaged = files("modelkiln").joinpath(FOLDERS[folder], filename)  # a zipped install
    if packaged.is_file():
        return packaged.read_bytes()
    repo = _REPO_DIR / folder / filename
    if repo.is_file():
        return repo.read_bytes()
    raise FileNotFoundError(f"{filename} is neither packaged (modelkiln/{FOLDERS[folder]}/) nor in "
                            f"{_REPO_DIR / folder}")
