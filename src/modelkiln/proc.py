"""The one way modelkiln runs a subprocess: with a timeout, captured output, a readable error."""
from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from .errors import KilnError


def run(cmd: Sequence[str], *, cwd: Path | None = None, timeout: float = 60.0,
        check: bool = True, env: Mapping[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    """Run `cmd`; raise KilnError naming the command and its stderr tail when it fails."""
    try:
        done = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              env=None if env is None else dict(env))
    except FileNotFoundError:
        raise KilnError(f"{cmd[0]}: command not found; install it or put it on PATH") from None
    except subprocess.TimeoutExpired:
        raise KilnError(f"{' '.join(cmd)}: no answer after {timeout:.0f} s") from None
    if check and done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise KilnError(f"{' '.join(cmd)} exited {done.returncode}: " + " | ".join(tail))
    return done
