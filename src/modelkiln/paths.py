"""Where things live in a project, answered in one place and the same from any working directory.

A project is the nearest directory (from a spec file, or from the working directory) that holds
`dodo.py`, `pyproject.toml` or `.git`. Under it:

    build/<bundle>/<stage>/          stage outputs, with build/<bundle>/.stamps/<stage>.json
    dist/<bundle>/<version>/<backend>/  packaged bundles (bundle.tar.gz + manifest.json)
    published/                       the embedded file:// publish default
    model-store/                     the embedded model store (when MODEL_STORE_ROOT is unset)
    configs/                         the registry (when KILN_REGISTRY_DIR is unset)
    .kiln/                           tool state: stat cache, spec cache, doit's database

This module sits at the bottom with `errors` so that every layer (the store, the registry, the
publishers, the graph) can ask it without importing each other.
"""
from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path

PROJECT_MARKERS = ("dodo.py", "pyproject.toml", ".git")
STORE_ROOT_ENV = "MODEL_STORE_ROOT"
REGISTRY_DIR_ENV = "KILN_REGISTRY_DIR"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def project_root(start: Path | str | None = None) -> Path:
    """The nearest directory at or above `start` (a file or directory; default: the working
    directory) that holds a project marker; `start`'s own directory when none does."""
    here = Path(start).resolve() if start is not None else Path.cwd().resolve()
    if not here.is_dir():
        here = here.parent
    for d in (here, *here.parents):
        if any((d / marker).exists() for marker in PROJECT_MARKERS):
            return d
    return here


@dataclass(frozen=True)
class Layout:
    """The directories of one project (see the module doc)."""

    root: Path

    @classmethod
    def here(cls) -> Layout:
        return cls(project_root())

    @property
    def build(self) -> Path:
        return self.root / "build"

    @property
    def dist(self) -> Path:
        return self.root / "dist"

    @property
    def state(self) -> Path:
        return self.root / ".kiln"

    @property
    def published(self) -> Path:
        return self.root / "published"

    @property
    def default_store(self) -> Path:
        return self.root / "model-store"

    @property
    def default_registry(self) -> Path:
        return self.root / "configs"

    # Planning calls these for every task: a child of the bundle's (remembered) directory costs
    # less than parsing the whole path again.
    def stage_dir(self, bundle: str, stage: str) -> Path:
        return _bundle_dirs(self.root, bundle)[0] / stage

    def stamp(self, bundle: str, stage: str) -> Path:
        return _bundle_dirs(self.root, bundle)[1] / f"{stage}.json"

    def dist_dir(self, bundle: str, version: str, backend: str) -> Path:
        return Path(self.root, "dist", bundle, version, backend)

    def oci_dir(self, bundle: str, version: str, backend: str) -> Path:
        """The OCI image layout `image:<bundle>-<backend>` writes (the embedded OCI default)."""
        return self.dist / bundle / version / "oci" / backend


@functools.lru_cache(maxsize=4096)
def _bundle_dirs(root: Path, bundle: str) -> tuple[Path, Path]:
    """build/<bundle> and build/<bundle>/.stamps of a project."""
    base = Path(root, "build", bundle)
    return base, base / ".stamps"


def store_root(explicit: Path | str | None = None, *, template: str | None = None,
               root: Path | None = None) -> Path:
    """The model store root: `explicit` (--store-root), else a spec's `publish.store.root`
    `template` with ${VARS} expanded, else $MODEL_STORE_ROOT, else `<project>/model-store`.

    A template naming an unset variable means the embedded default, so the README's main job runs
    with nothing set.
    """
    if explicit:
        return Path(explicit).expanduser()
    if template:
        if not [v for v in _VAR.findall(template) if not os.environ.get(v)]:
            return Path(_VAR.sub(lambda m: os.environ[m.group(1)], template)).expanduser()
    elif os.environ.get(STORE_ROOT_ENV):
        return Path(os.environ[STORE_ROOT_ENV]).expanduser()
    return Layout(root or project_root()).default_store


def registry_dir(explicit: Path | str | None = None, *, root: Path | None = None) -> Path:
    """The registry directory: `explicit`, else $KILN_REGISTRY_DIR, else `<project>/configs`."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(REGISTRY_DIR_ENV)
    return Path(env) if env else Layout(root or project_root()).default_registry
