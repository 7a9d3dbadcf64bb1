"""Helpers for the store tests: forked children (cheap, so crash tests can kill hundreds), debris
checks, and a published template store copied per test."""
from __future__ import annotations

import os
import shutil
import traceback
from collections.abc import Callable
from pathlib import Path

AGENT = "registry"


def fork_run(fn: Callable[[], None]) -> int:
    """Run `fn` in a forked child; return its wait status (exit code 0 on success, 1 on error)."""
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 0
        try:
            fn()
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


def killed(status: int) -> bool:
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9


def debris(agent_dir: Path) -> list[str]:
    """Everything a finished, uninterrupted writer would not have left behind."""
    found = [p.name for p in (agent_dir / "versions").iterdir()
             if p.name.endswith(".tmp") or p.name.startswith(".")]
    found += [p.name for p in agent_dir.iterdir()
              if p.name.startswith(".") and p.name not in (".lock",)]
    return sorted(found)


def copy_store(template: Path, dest: Path) -> Path:
    shutil.copytree(template, dest, symlinks=True)
    return dest
