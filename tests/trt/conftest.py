"""Fake host facts and a fake engine builder for the TensorRT tests (no GPU or TensorRT here).

`fake_host` swaps the trt stage's view of the machine; `fake_builder` makes the stage build with
trt_builder.FakeBuilder. Both patch module functions in this process, so builds that use them
run doit in-process (api.build), never in a subprocess.
"""
from __future__ import annotations

from collections.abc import Callable

import pytest

from modelkiln.artifacts.engine_key import HostFacts
from modelkiln.stages import trt, trt_builder


@pytest.fixture
def fake_host(monkeypatch: pytest.MonkeyPatch) -> Callable[[HostFacts], None]:
    def use(facts: HostFacts) -> None:
        monkeypatch.setattr(trt, "host_facts", lambda: facts)
    return use


@pytest.fixture
def fake_builder(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    def use(version: str = "10.3.0") -> None:
        monkeypatch.setattr(trt, "select_builder",
                            lambda host: trt_builder.FakeBuilder(host.tensorrt or version))
    return use
