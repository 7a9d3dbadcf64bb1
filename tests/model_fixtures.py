"""Model fixtures, loaded as a pytest plugin (`-p model_fixtures` in pyproject) so they stay separate from
the S3 fixtures in conftest.py."""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers import make_inputs


@pytest.fixture(scope="session")
def tiny_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One seeded tiny checkpoint + labels + calibration, made once per test session."""
    directory = tmp_path_factory.mktemp("tiny-inputs")
    make_inputs(directory)
    return directory
