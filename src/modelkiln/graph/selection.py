"""The task names `kiln build -t` accepts, checked before doit runs.

doit answers an unknown name with its own message, which tells the user to run `kiln list` (it
names whatever program it runs in, and `kiln` has no `list`), and exits 3, which `kiln build`
read as a failed build. A misspelt task is a usage error: name it, with the nearest real names.
"""
from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Sequence

from ..errors import UsageError
from ..model import BrokenSpec, Bundle
from .tasks import add_broken, task_dicts


def task_names(bundles: list[Bundle], broken: Sequence[BrokenSpec] = (),
               skip: frozenset[str] = frozenset()) -> list[str]:
    """Every name doit would accept for these bundles: each stage's group (`weights`) and each of
    its tasks (`weights:registry-v3`), from the same task dicts the build runs."""
    groups = task_dicts(bundles, skip)
    add_broken(groups, broken)
    return sorted({*groups, *(f"{base}:{d['name']}" for base, ds in groups.items() for d in ds)})


def check_selection(selection: Sequence[str], names: Sequence[str]) -> None:
    """UsageError naming every selected task that is not one of `names` (doit's `*` patterns
    must match at least one), with the nearest names or where to list them."""
    known = set(names)
    unknown = [s for s in selection
               if s not in known and not ("*" in s and fnmatch.filter(names, s))]
    if not unknown:
        return
    lines = []
    for name in unknown:
        near = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        lines.append(f"-t {name}: no such task" + (f" (did you mean {', '.join(near)}?)"
                                                   if near else ""))
    lines.append("`kiln plan` lists every stage task; `doit list --all` every task name")
    raise UsageError("\n".join(lines) if len(lines) > 2 else "; ".join(lines))
