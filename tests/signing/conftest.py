"""Signing fixtures: two real P-256 key pairs (the publisher's and a stranger's)."""
from __future__ import annotations

from pathlib import Path

import pytest

from modelkiln import signing
from signing.signkit import KeyPair


@pytest.fixture
def key(tmp_path: Path) -> KeyPair:
    return KeyPair(*signing.generate(tmp_path / "keys", "publisher"))


@pytest.fixture
def other_key(tmp_path: Path) -> KeyPair:
    return KeyPair(*signing.generate(tmp_path / "keys", "stranger"))
