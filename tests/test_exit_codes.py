"""One exit-code table: `errors.ExitCode`. The README's copy must list exactly its codes, and the
CLI's own outcomes (usage error, `plan --check`, interrupted) come from it."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from modelkiln import cli
from modelkiln.errors import ConflictError, DriftError, ExitCode, KilnError, SpecError

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_table_lists_exactly_the_exit_codes() -> None:
    section = README.read_text().split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    codes = [int(m) for m in re.findall(r"^\| (\d+) \|", section, flags=re.M)]
    assert codes == sorted(int(c) for c in ExitCode)


def test_error_leaves_carry_codes_from_the_table() -> None:
    assert KilnError("x").exit_code is ExitCode.FAILURE
    assert DriftError("n", []).exit_code is ExitCode.DRIFT
    assert SpecError([]).exit_code is ExitCode.SPEC
    assert ConflictError("loc", "a", "b").exit_code is ExitCode.CONFLICT


def test_usage_error_exits_with_the_usage_code(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["no-such-command"])
    assert info.value.code == ExitCode.USAGE and ExitCode.USAGE.value == 64
    assert "kiln: error:" in capsys.readouterr().err


def test_interrupt_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*_: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_validate", interrupted)
    assert cli.main(["validate"]) == ExitCode.INTERRUPTED and ExitCode.INTERRUPTED.value == 130
