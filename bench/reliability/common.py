"""What every trial module of the reliability campaign returns, and the helpers they share.

A trial module (store_trials.py, publish_trials.py, archives.py, specs.py) exposes
`run(quick: bool) -> list[Row]`; `run.py` imports whichever exist and prints one table. A
violation is a broken promise (a lost version, a wrong "ok", a half-visible write); a traceback is
any failure that was not one clear `kiln:` line (an exception that is not a KilnError, or a
Python traceback in a command's output).
"""
from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
for extra in (REPO / "tests", REPO / "src"):  # distfactory / helpers, and modelkiln itself
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))


@dataclass
class Row:
    """One line of the campaign table."""

    name: str
    trials: int = 0
    violations: int = 0
    tracebacks: int = 0
    notes: list[str] = field(default_factory=list)

    def violation(self, what: str) -> None:
        self.violations += 1
        if len(self.notes) < 5:
            self.notes.append(what)

    def crashed(self, what: str) -> None:
        self.tracebacks += 1
        if len(self.notes) < 5:
            self.notes.append(what)


def fork_call(fn: Callable[[], None]) -> tuple[int, str]:
    """Run `fn` in a forked child: (status, "" or the traceback of an exception that was not a
    KilnError; a KilnError exits 1 with its one line, like the CLI)."""
    from modelkiln.errors import KilnError

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code, text = 0, b""
        try:
            fn()
        except KilnError as exc:
            code, text = 1, f"kiln: {exc}".encode()
        except BaseException:
            code, text = 3, traceback.format_exc().encode()
        os.write(w, text[:60000])
        os._exit(code)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    out = b"".join(chunks).decode(errors="replace")
    crashed = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 3
    return status, out if crashed else ""


def report(rows: list[Row]) -> int:
    """Print a trial module's rows when it runs on its own; exit 1 when any row has a violation
    or a traceback."""
    for r in rows:
        print(f"{r.name}: {r.trials} cases, {r.violations} violations, {r.tracebacks} tracebacks")
        for note in r.notes:
            print(f"  {note}")
    return 1 if any(r.violations or r.tracebacks for r in rows) else 0
