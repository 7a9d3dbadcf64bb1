"""doit's database backend for modelkiln projects: sqlite3, and forgetting a task drops its stamp.

doit finds it by the entry point `kiln-stamps` of the group `doit.BACKEND` (pyproject.toml);
graph.tasks names it in DOIT_CONFIG. Kept apart from graph.clean so that importing the graph for
`kiln plan` does not import doit's database module.
"""
from __future__ import annotations

from typing import Any

from doit.dependency import SqliteDB

from .clean import FORGETTING, KNOWN, forget


class StampDB(SqliteDB):  # type: ignore[misc]  # doit ships no type hints
    """doit's sqlite3 database, but forgetting a task also drops its stamp (graph.clean).

    doit also calls `remove` for a task that failed or whose upstream failed: only under
    `doit forget` / `doit clean` (graph.clean.FORGETTING) does it drop the stamp."""

    desc = "sqlite3, and forgetting a task drops its modelkiln stamp"

    def __init__(self, name: str, codec: Any, *, module_name: str | None = None):
        super().__init__(name, codec, module_name=module_name)

    def remove(self, task_id: str) -> None:
        super().remove(task_id)
        if FORGETTING["on"] and task_id in KNOWN:
            forget(task_id, *KNOWN[task_id])

    def remove_all(self) -> None:
        super().remove_all()
        for task, (stamp, state) in KNOWN.items():
            forget(task, stamp, state)
