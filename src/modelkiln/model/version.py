"""Resolve a version template. Only packaging and publishing see the resolved version, so a
`{git_commit}` in the version never makes weights, thresholds or ONNX export rerun."""
from __future__ import annotations

from functools import cache
from pathlib import Path

from ..errors import KilnError
from ..proc import run


@cache
def git_commit(root: Path) -> str:
    """Short hash of HEAD in `root`; a clear error outside a git checkout."""
    done = run(["git", "rev-parse", "--short", "HEAD"], cwd=root, check=False, timeout=10)
    if done.returncode != 0:
        raise KilnError(f"{root}: version uses {{git_commit}} but this is not a git checkout "
                        "with a commit; commit first or use a literal version")
    return done.stdout.strip()


def resolve(template: str, root: Path) -> str:
    """Fill `{git_commit}` in a version template."""
    if "{git_commit}" in template:
        return template.replace("{git_commit}", git_commit(root))
    return template
