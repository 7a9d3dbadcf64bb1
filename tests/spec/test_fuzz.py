"""Property: no spec, however mangled, gets past `kiln validate` as a traceback.

Specs generated from the schema and mutants of a valid one (see spec_fuzz.py) go through
`api.validate`, the code path of `kiln validate`, in-process. Each must be accepted, or refused
with a KilnError whose every problem is one `file:line:col: key: what` line. Derandomized with a
fixed number of examples, so the suite is deterministic and takes seconds; bench/reliability/specs.py
runs the same cases by the ten thousand.
"""
from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spec.spec_fuzz import case, make_project, outcome


@pytest.fixture(scope="module")
def fuzz_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("fuzz"))


def test_the_unmutated_spec_is_accepted(fuzz_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(fuzz_project.parents[1])
    assert outcome(fuzz_project) == "accepted"


@settings(max_examples=250, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_fuzzed_specs_never_escape_as_tracebacks(fuzz_project: Path, monkeypatch: pytest.MonkeyPatch,
                                                 seed: int) -> None:
    monkeypatch.chdir(fuzz_project.parents[1])
    fuzz_project.write_bytes(case(random.Random(seed)))
    assert outcome(fuzz_project) in ("accepted", "refused")


@pytest.mark.parametrize("seed", [10, 1111])
def test_cases_that_once_crashed(fuzz_project: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """A 5,000-digit integer (Python refuses to convert it) and a 4 KB path, from the bench run."""
    monkeypatch.chdir(fuzz_project.parents[1])
    fuzz_project.write_bytes(case(random.Random(seed)))
    assert outcome(fuzz_project) == "refused"
