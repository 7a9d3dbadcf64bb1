"""Engine keys and host facts: what an engine was built for, and which hosts may run it."""
from __future__ import annotations

import dataclasses
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelkiln.artifacts import engine_key as ek
from modelkiln.errors import KilnError
from trt.trt_hosts import A100, GPU_NO_TRT, H200, NO_GPU


def key(**changes: object) -> ek.EngineKey:
    base: ek.EngineKey = {
        "schema": 1, "onnx_sha256": "a" * 64, "onnx_files": {"model.onnx": "a" * 64},
        "profiles": {"batch": {"min": 1, "opt": 8, "max": 32},
                     "sequence": {"min": 1, "opt": 128, "max": 128}},
        "precision": "fp16", "builder": {"workspace_mb": None, "optimization_level": 3,
                                         "precision_mode": "flags"},
        "plugins": {}, "code": "1", "tensorrt": "10.3.0", "cuda": "cuda12",
        "compute_capability": "9.0", "device_name": None, "hardware_compatibility": "none",
        "version_compatible": False, "os_arch": "linux-x86_64"}
    return {**base, **changes}  # type: ignore[typeddict-item]


def test_family_ignores_the_host_and_the_key_does_not() -> None:
    sm90, sm80 = key(), key(compute_capability="8.0", tensorrt="10.4.0")
    assert ek.family(sm90) == ek.family(sm80)
    assert ek.key_digest(sm90) != ek.key_digest(sm80)
    assert ek.family(key(profiles={"batch": {"min": 1, "opt": 4, "max": 16},
                                   "sequence": {"min": 1, "opt": 64, "max": 64}})) != ek.family(sm90)
    assert ek.family(key(onnx_sha256="b" * 64)) != ek.family(sm90)


@pytest.mark.parametrize("changes,host,reason", [
    ({}, H200, None),
    ({}, A100, "built for sm90, this GPU is sm80"),
    ({}, NO_GPU, "no GPU: nvidia-smi not found"),
    ({}, GPU_NO_TRT, "no TensorRT"),
    ({"tensorrt": "10.2.0"}, H200, "built with TensorRT 10.2.0, this host has 10.3.0"),
    ({"tensorrt": "10.2.0", "version_compatible": True}, H200, None),
    ({"tensorrt": "10.4.0", "version_compatible": True}, H200, "needs 10.x at 10.4.0 or later"),
    ({"tensorrt": "9.2.0", "version_compatible": True}, H200, "needs 9.x"),
    ({"cuda": "cuda11"}, H200, "built for cuda11"),
    ({"os_arch": "linux-aarch64"}, H200, "built on linux-aarch64"),
    ({"hardware_compatibility": "ampere-plus"}, A100, None),
    ({"hardware_compatibility": "ampere-plus"},
     dataclasses.replace(A100, gpu_cc="7.5"), "Ampere and newer"),
    ({"device_name": "NVIDIA H100"}, H200, "built strictly for NVIDIA H100"),
    ({"device_name": "NVIDIA H200"}, H200, None),
])
def test_mismatch(changes: dict[str, object], host: ek.HostFacts, reason: str | None) -> None:
    got = ek.mismatch(key(**changes), host)
    if reason is None:
        assert got is None
    else:
        assert got is not None and reason in got


def test_platform_class() -> None:
    assert ek.platform_class(H200) == "sm90-trt10.3.0-cuda12"
    assert ek.platform_class(H200, strict=True) == "sm90-trt10.3.0-cuda12-NVIDIA_H200"
    assert ek.platform_class(NO_GPU) == "none"
    assert ek.sm_tag("12.0") == "sm120"


def test_sidecar_round_trip_and_a_tampered_key_is_refused(tmp_path: Path) -> None:
    side = ek.sidecar(key(), "engines/sm90/model.plan", 3, "c" * 64)
    path = tmp_path / "engine.json"
    path.write_bytes(ek.dumps(side))
    assert ek.load(path) == side
    raw = json.loads(path.read_bytes())
    raw["key"]["compute_capability"] = "8.0"  # claims another GPU without re-keying
    path.write_text(json.dumps(raw))
    with pytest.raises(KilnError, match="key_sha256 does not match"):
        ek.load(path)
    del raw["key"]["cuda"]
    path.write_text(json.dumps(raw))
    with pytest.raises(KilnError, match="lacks cuda"):
        ek.load(path)


def _fake_smi(bindir: Path, body: str) -> None:
    smi = bindir / "nvidia-smi"
    smi.write_text("#!/bin/sh\n" + body)
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def path_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}/usr/bin:/bin")
    ek.probe_host.cache_clear()
    yield bindir
    ek.probe_host.cache_clear()


def test_probe_reads_nvidia_smi(path_only: Path) -> None:
    _fake_smi(path_only, 'echo "9.0, NVIDIA H200"\necho "9.0, NVIDIA H200"\n')
    host = ek.probe_host()
    assert (host.gpu_cc, host.gpu_name, host.sm) == ("9.0", "NVIDIA H200", "sm90")
    assert host.tensorrt is None  # not installed here: read from metadata, never imported
    assert "no TensorRT" in (host.unusable() or "")


def test_probe_without_nvidia_smi_or_with_a_failing_one(path_only: Path) -> None:
    host = ek.probe_host()
    assert host.gpu_cc is None and "nvidia-smi not found" in (host.unusable() or "")
    ek.probe_host.cache_clear()
    _fake_smi(path_only, 'echo "NVIDIA-SMI has failed: no devices" >&2\nexit 9\n')
    assert "nvidia-smi failed: NVIDIA-SMI has failed" in (ek.probe_host().unusable() or "")
