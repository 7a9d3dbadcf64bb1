"""Plug-ins: stages, backends and transports found through entry-point groups.

modelkiln's own stages, backends and transports are registered in its pyproject
(`[project.entry-points."modelkiln.stages"]` ...) exactly as a third-party package registers its
own, the way pytest and pre-commit find their plug-ins: `importlib.metadata` reads every installed
distribution's entry points once per process (one scan for all groups, ~10-20 ms), and each group's
table loads what it needs.

Two rules keep a bad plug-in from hurting anyone else:
- A plug-in that cannot be imported, or whose object lacks a member its group requires, is one
  `Plugin` with a `problem` naming its package ("toy-kiln 0.1: ModuleNotFoundError: ..."), printed
  once per process as one line on stderr by `warn_broken`, never a traceback; the others load.
- A name that is already taken keeps its first owner: modelkiln's own entries first, then the
  other packages in name order. The later one is reported as a conflict, not loaded.

Each group's table hands `loaded` its built-in entries as objects (the stage table, mypy-checked
against the protocol), used for an entry of modelkiln's own that its installed metadata lacks: a
source checkout run without installing, an editable install made before an entry point was added
(pip writes entry points only at install time, so until `pip install -e .` is run again they are
stale), and the serving image, whose runtime layer copies the package without any distribution
metadata but must still resolve s3:// and file:// for the bootstrap. Entries the metadata does
carry win; the fallback only fills gaps, so a complete install behaves as its metadata says.
"""
from __future__ import annotations

import functools
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType

STAGES, BACKENDS, TRANSPORTS = "modelkiln.stages", "modelkiln.backends", "modelkiln.transports"
GROUPS = (STAGES, BACKENDS, TRANSPORTS)
OWN = "modelkiln"

# What each group's objects must offer (the runtime shape of its Protocol: stages.base.Stage,
# backends.Backend, transport.schemes.Transport); mypy checks modelkiln's own against the Protocols.
MEMBERS: dict[str, tuple[str, ...]] = {
    STAGES: ("NAME", "DOC", "CODE_VERSION", "READS", "WRITES", "OPTIONAL", "TOOLS", "PLATFORM",
             "plan", "run"),
    BACKENDS: ("NAME", "DOC", "STAGES", "PACKS", "REPORTS", "GRAPH", "TOOLS", "URI_ENV",
               "MODEL_DIR", "EXPORTS", "IMAGE_PACKAGES", "NEEDS", "LIBRARY", "MODEL_FILE",
               "FORMAT", "ENGINES", "enabled", "needs_gpu"),
    TRANSPORTS: (),  # a capability (open_location, source_reader) is checked where it is used
}


@dataclass(frozen=True)
class Plugin:
    """One entry of a group: where it comes from, and what loading it gave."""

    group: str
    name: str
    value: str  # "package.module" or "package.module:attr"
    package: str  # the distribution that registered it
    version: str
    obj: object = None
    problem: str | None = None

    @property
    def origin(self) -> str:
        return f"{self.package} {self.version}".strip()


@dataclass(frozen=True)
class _Entry:
    group: str
    name: str
    value: str
    package: str
    version: str
    obj: object = None  # a built-in supplied as an object (the fallback): nothing to import


@functools.cache
def _entries() -> tuple[_Entry, ...]:
    """Every installed entry of our groups, modelkiln's own first, then by package and name."""
    from importlib import metadata

    found: list[_Entry] = []
    seen: set[tuple[str, str, str]] = set()
    for dist in metadata.distributions():
        try:
            package = dist.metadata["Name"] or "?"
            version = dist.version or ""
            eps = [ep for ep in dist.entry_points if ep.group in GROUPS]
        except Exception:  # damaged metadata of an unrelated package: not ours to judge
            continue
        for ep in eps:
            mark = (ep.group, ep.name, package.lower())
            if mark not in seen:  # a dist seen twice on sys.path (editable + site) counts once
                seen.add(mark)
                found.append(_Entry(ep.group, ep.name, ep.value, package, version))
    found.sort(key=lambda e: (e.package.lower() != OWN, e.package.lower(), e.group, e.name))
    return tuple(found)


def _own_version() -> str:
    from . import __version__

    return __version__


def _with_fallback(group: str, builtin: Mapping[str, object]) -> list[_Entry]:
    entries = [e for e in _entries() if e.group == group]
    own = {e.name for e in entries if e.package.lower() == OWN}
    missing = [_Entry(group, name, _value_of(obj), OWN, _own_version(), obj)
               for name, obj in builtin.items() if name not in own]
    return missing + entries if missing else entries


def _value_of(obj: object) -> str:
    name = getattr(obj, "__name__", "")
    module = getattr(obj, "__module__", None)
    return f"{module}:{name}" if module and not isinstance(obj, ModuleType) else str(name)


def _load_value(value: str) -> object:
    from importlib import import_module

    module_name, _, attr = value.partition(":")
    obj: object = import_module(module_name.strip())
    for part in attr.strip().split(".") if attr.strip() else ():
        obj = getattr(obj, part)
    return obj


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def plugins(group: str, builtin: Mapping[str, object]) -> tuple[Plugin, ...]:
    """Every entry of `group`, loaded (or with its problem), first owner of each name first.
    Loaded once per process and group."""
    if group not in _LOADED:
        taken: set[str] = set()
        _LOADED[group] = tuple(_load(e, taken) for e in _with_fallback(group, builtin))
    return _LOADED[group]


_LOADED: dict[str, tuple[Plugin, ...]] = {}


def _load(entry: _Entry, taken: set[str]) -> Plugin:
    base = Plugin(entry.group, entry.name, entry.value, entry.package, entry.version)
    if entry.name in taken:
        return _replace(base, problem=f"the name {entry.name!r} is already registered; not "
                                      "loaded (uninstall one of the two packages)")
    taken.add(entry.name)
    try:
        obj = entry.obj if entry.obj is not None else _load_value(entry.value)
    except Exception as exc:  # any failure of third-party code is one line, never a traceback
        return _replace(base, problem=f"cannot load {entry.value}: {_one_line(exc)}")
    absent = [m for m in MEMBERS.get(entry.group, ()) if not hasattr(obj, m)]
    if absent:
        return _replace(base, problem=f"{entry.value} lacks {', '.join(absent)} (see the "
                                      f"{entry.group} protocol in the README)")
    return _replace(base, obj=obj)


def _replace(p: Plugin, **changes: object) -> Plugin:
    from dataclasses import replace

    return replace(p, **changes)  # type: ignore[arg-type]


def loaded(group: str, builtin: Mapping[str, object]) -> dict[str, object]:
    """name -> object of every entry of `group` that loaded; broken ones are warned about.
    `builtin`: modelkiln's own entries of the group, for what stale metadata lacks."""
    found = plugins(group, builtin)
    warn_broken(found)
    return {p.name: p.obj for p in found if p.problem is None}


_WARNED: set[tuple[str, str, str]] = set()


def warn_broken(found: Iterable[Plugin]) -> None:
    """One line on stderr per broken plug-in, once per process: the build goes on without it."""
    for p in found:
        mark = (p.group, p.name, p.package)
        if p.problem is not None and mark not in _WARNED:
            _WARNED.add(mark)
            print(f"kiln: warning: plug-in {p.name!r} ({p.group}) from {p.origin}: {p.problem}",
                  file=sys.stderr, flush=True)


def reset() -> None:
    """Forget what was found (tests install and remove packages within one process)."""
    _entries.cache_clear()
    _LOADED.clear()
    _WARNED.clear()
