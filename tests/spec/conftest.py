"""Shared fixtures for the spec tests: a working directory holding real spec files.

The tests chdir into a temporary directory so problems name files the way a user sees them
(`b.yaml:16:12: ...`), exactly as `display_path` prints them.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from spec.spec_helpers import Write


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def write(workdir: Path) -> Write:
    """write(name, text or bytes) -> relative Path of the file written in the working directory."""

    def _write(name: str, content: str | bytes) -> Path:
        path = Path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    return _write
