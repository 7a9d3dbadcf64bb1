"""The page actions: Verify, Lock (with set-expected), Unlock and Import, each one call of the
registry function its `kiln registry` command makes, recorded in a log the pages show.

A log line reads like the command's outcome: the command it stands for, the exit status the CLI
would return (2 for hash drift, with every changed file), and the message. The last Verify per
entry is also kept as the drift badge's verdict (rows.py).
"""
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ..errors import DriftError, ExitCode, KilnError
from ..registry import lock, unlock, verify
from ..registry.curate import StaticFields, import_discovered


@dataclass(frozen=True)
class LogLine:
    when: str
    name: str
    command: str
    code: int
    lines: tuple[str, ...]

    @property
    def outcome(self) -> str:
        try:
            return f"exit {self.code} ({ExitCode(self.code).name.lower().replace('_', ' ')})"
        except ValueError:
            return f"exit {self.code}"


@dataclass
class Actions:
    """Runs actions against one registry directory and remembers what they said."""

    registry_dir: str | None
    log: deque[LogLine] = field(default_factory=lambda: deque(maxlen=100))
    verdicts: dict[str, str | None] = field(default_factory=dict)
    _mutex: threading.Lock = field(default_factory=threading.Lock)

    def _run(self, name: str, command: str, call: Callable[[], str]) -> LogLine:
        try:
            line = LogLine(_now(), name, command, ExitCode.OK, (call(),))
        except KilnError as exc:
            line = LogLine(_now(), name, command, int(exc.exit_code), tuple(str(exc).splitlines()))
            if isinstance(exc, DriftError):
                with self._mutex:
                    self.verdicts[name] = "; ".join(str(c) for c in exc.changes) or "hash drift"
        with self._mutex:
            self.log.appendleft(line)
        return line

    def entries_log(self, name: str | None = None) -> list[LogLine]:
        with self._mutex:
            return [x for x in self.log if name is None or x.name == name]

    def verify(self, name: str) -> LogLine:
        def call() -> str:
            r = verify(name, registry_dir=self.registry_dir)
            with self._mutex:
                self.verdicts[name] = None
            signed = f" signed_by={r.signed_by[:16]}" if r.signed_by else ""
            note = " (hash recorded: first verify)" if r.recorded else ""
            if r.not_recorded:
                note = f" (last_verified not written: {r.not_recorded})"
            return (f"ok {r.name} aggregate={r.aggregate_sha256} files={r.files} "
                    f"last_verified={r.last_verified}{signed}{note}")
        return self._run(name, f"kiln registry verify {name}", call)

    def lock(self, name: str, set_expected: bool) -> LogLine:
        def call() -> str:
            entry = lock(name, set_expected, registry_dir=self.registry_dir)
            if set_expected:
                with self._mutex:
                    self.verdicts.pop(name, None)  # the bytes now are the expected ones
            return f"locked {entry.name} expected_hash={entry.version_lock.expected_hash}"
        flag = " --set-expected" if set_expected else ""
        return self._run(name, f"kiln registry lock {name}{flag}", call)

    def unlock(self, name: str) -> LogLine:
        def call() -> str:
            return f"unlocked {unlock(name, registry_dir=self.registry_dir).name}"
        return self._run(name, f"kiln registry unlock {name}", call)

    def import_entry(self, name: str, fields: Callable[[], StaticFields]) -> LogLine:
        """`fields` is read inside the logged call, so a field that cannot be parsed is a log
        line with its exit status like any other refusal."""
        def call() -> str:
            entry = import_discovered(name, fields(), registry_dir=self.registry_dir)
            return (f"imported {entry.name} into the curated layer (static fields only: "
                    "review and commit model_registry.curated.json)")
        return self._run(name, f"import {name} into the curated layer", call)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
