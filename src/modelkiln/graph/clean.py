"""Forget and clean: doit's verbs for "build this again" and "remove what was built", on stamps.

Up-to-dateness lives in each task's stamp (graph.state), not in doit's database, so doit's own
`forget`, `clean` and `-a/--always-execute` would change nothing a later run reads. Here each
maps onto the stamps:

- forget a task: drop its stamp (and a record it owes the cache); the next run reruns it.
  `doit forget` does this through graph.doitdb.StampDB, the database backend the doit
  namespace names (doit calls `remove(task)` for each task it forgets, `remove_all()` for `--all`).
- force a task (`kiln build --force`, `doit -a`): forget it just before its action runs, and run
  its stage instead of restoring it from the action cache.
- clean a task (`doit clean`): forget it, then remove its output directory.
- clean a bundle (`kiln clean NAME`): build/<name>/ (every stage's outputs and stamps) and
  dist/<name>/ (packages and OCI layouts). Published copies, the model store and the action
  cache are left alone: they are not this checkout's build outputs.

`KNOWN` maps each task of the project doit loaded to (stamp, state dir); doit_namespace fills it,
so the database backend, created before the tasks are loaded, finds them when doit forgets.
"""
from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from ..errors import KilnError
from ..paths import Layout
from ..stages.base import StagePlan
from . import unsaved
from .state import drop_stamp

KNOWN: dict[str, tuple[Path, Path]] = {}
# Whether doit's `remove(task)` means "forget": set for `doit forget` / `doit clean` only. doit
# also calls it for every task that fails or whose upstream failed; dropping those stamps would
# cost the early cutoff (a task whose upstream is rebuilt to the same bytes stays done).
FORGETTING = {"on": False}


def doit_command(argv: list[str]) -> str:
    """doit's subcommand in its argv (`run` when none is named: `doit`, `doit -a TASK`)."""
    commands = ("auto", "clean", "dumpdb", "forget", "help", "ignore", "info", "list", "reset-dep",
                "run", "strace", "tabcompletion")
    words = [a for a in argv if not a.startswith("-") and "=" not in a]
    return words[0] if words and words[0] in commands else "run"


def register(plans: Iterable[StagePlan], state: Path) -> None:
    """Remember the stamps of the tasks doit was handed (for `doit forget`)."""
    for p in plans:
        KNOWN[p.task] = (p.stamp, state)


def forget(task: str, stamp: Path, state: Path) -> None:
    """The task is out of date from now on: no stamp, no record owed to the cache."""
    unsaved.clear(state, task)
    drop_stamp(stamp)


def clean_task(plan: StagePlan, state: Path) -> list[str]:
    """Forget the task and remove its output directory; what was removed, for doit's log."""
    forget(plan.task, plan.stamp, state)
    return [str(p) for p in _remove(plan.out_dir)]


def clean_bundle(root: Path, name: str, tasks: Iterable[str] = ()) -> list[Path]:
    """Remove build/<name>/ and dist/<name>/ of the project at `root` (what exists of them) and
    the records its `tasks` owe the cache; the removed directories."""
    layout = Layout(root)
    for task in tasks:
        unsaved.clear(layout.state, task)
    removed: list[Path] = []
    for directory in (layout.build / name, layout.dist / name):
        removed += _remove(directory)
    return removed


def built_bundles(root: Path) -> list[str]:
    """Names with something under build/ or dist/ (a bundle whose spec is gone can be cleaned)."""
    layout = Layout(root)
    names: set[str] = set()
    for base in (layout.build, layout.dist):
        if base.is_dir():
            names.update(p.name for p in base.iterdir() if p.is_dir() and not p.is_symlink())
    return sorted(names)


def _remove(directory: Path) -> list[Path]:
    """Remove a directory tree (a symlink or file in its place: the link or file only)."""
    try:
        if directory.is_symlink() or directory.is_file():
            directory.unlink()
        elif directory.is_dir():
            shutil.rmtree(directory)
        else:
            return []
    except OSError as exc:
        raise KilnError(f"{directory}: cannot remove ({exc.strerror or exc}); check its "
                        "permissions and run again") from None
    return [directory]
