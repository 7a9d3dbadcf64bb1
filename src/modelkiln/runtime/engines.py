"""Which TensorRT engine of an unpacked bundle this serving host may use, if any.

A tensorrt bundle holds the ONNX model and one engine per GPU architecture it was built for
(`engines/sm<cc>/model.plan`, each with an `engine.json` key). An engine that does not match the
host fails to load at best and misbehaves at worst, so the bootstrap uses one only when its key
matches this host's facts: compute capability (or Ampere-and-newer for hardware-compatible
engines), the installed TensorRT version (same major and not older for version-compatible
ones), CUDA flavour, OS/architecture, and in strict mode the GPU's name. Otherwise the serving app
gets the ONNX model and the reason, in `--json`.

Host facts come from nvidia-smi and package metadata (artifacts.engine_key.probe_host): TensorRT
is never imported here, so a host without a GPU starts without touching CUDA libraries.
`REGISTRY_TRT_ENGINE=off` turns engines off on a host (the ONNX model serves).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import engine_key as ek
from ..artifacts import names
from ..errors import KilnError

OFF_ENV = "REGISTRY_TRT_ENGINE"


@dataclass(frozen=True)
class EngineChoice:
    """The engine chosen (None: the ONNX model serves), why, and why each other one was not."""

    path: Path | None
    reason: str
    rejected: dict[str, str] = field(default_factory=dict)  # engine dir -> why not
    host: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"engine": str(self.path) if self.path else None, "reason": self.reason,
                "rejected": dict(self.rejected), "host": dict(self.host)}


def _host_json(host: ek.HostFacts) -> dict[str, Any]:
    return {"compute_capability": host.gpu_cc, "gpu": host.gpu_name, "tensorrt": host.tensorrt,
            "cuda": host.cuda, "os_arch": host.os_arch}


def _rank(side: ek.Sidecar, host: ek.HostFacts) -> tuple[int, str]:
    """Prefer an engine built for exactly this GPU over a hardware-compatible one."""
    exact = side["key"]["compute_capability"] == host.gpu_cc and \
        side["key"]["hardware_compatibility"] == "none"
    return (0 if exact else 1, side["plan"])


def choose(root: Path, host: ek.HostFacts | None = None,
           env: Mapping[str, str] | None = None) -> EngineChoice:
    """The engine of the bundle unpacked at `root` that this host may run, or the reason none."""
    env = {} if env is None else env
    if (env.get(OFF_ENV) or "").strip().lower() in ("off", "0", "false", "no"):
        return EngineChoice(None, f"{OFF_ENV}=off: serving the ONNX model")
    host = host or ek.probe_host()
    sides: dict[str, ek.Sidecar] = {}
    rejected: dict[str, str] = {}
    for path in sorted((root / names.ENGINES_DIR).glob(f"*/{names.ENGINE_SIDECAR}")):
        rel = path.parent.relative_to(root).as_posix()
        try:
            sides[rel] = ek.load(path)
        except KilnError as exc:
            rejected[rel] = str(exc)
    if not sides and not rejected:
        return EngineChoice(None, "the bundle holds no TensorRT engine: serving the ONNX model",
                            host=_host_json(host))
    fits = []
    for rel, side in sides.items():
        why = ek.mismatch(side["key"], host)
        if why is None and not (root / side["plan"]).is_file():
            why = f"{side['plan']} is missing"
        if why is None:
            fits.append(side)
        else:
            rejected[rel] = why
    if not fits:
        return EngineChoice(None, "no engine matches this host: serving the ONNX model",
                            rejected, _host_json(host))
    best = min(fits, key=lambda s: _rank(s, host))
    for side in fits:
        if side is not best:
            rejected[str(Path(side["plan"]).parent)] = f"{best['plan']} fits this GPU more exactly"
    key = best["key"]
    return EngineChoice(root / best["plan"],
                        f"{best['plan']} matches this host ({host.sm}, TensorRT {host.tensorrt}, "
                        f"{host.cuda}; built for sm{key['compute_capability'].replace('.', '')} "
                        f"with TensorRT {key['tensorrt']})", rejected, _host_json(host))
