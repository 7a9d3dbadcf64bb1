"""TensorRT engine keys: what an engine was built for, the host facts it is matched against.

An engine is valid only on the GPU architecture, TensorRT version and CUDA flavour it was built
with (unless built hardware- or version-compatible), and rebuilding does not give identical bytes.
So every engine travels with an `engine.json` sidecar holding its key, and a serving host uses it
only when its own facts match that key. The key is written by the `trt` stage and read by the
bundle packager and the runtime bootstrap: one writer, one reader, both here.

Host facts are read without importing TensorRT: the GPU from `nvidia-smi` (or, where only the
driver is there, /proc/driver/nvidia), TensorRT's version from installed package metadata, the
CUDA flavour from the name of the TensorRT wheel (tensorrt-cu12 -> cuda12). Importing TensorRT
on a host without a GPU loads CUDA libraries that may not be there; metadata reads never fail.
"""
from __future__ import annotations

import functools
import json
import platform
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TypedDict

from ..errors import KilnError
from .digest import canonical_json, sha256_bytes

SCHEMA = 1
HW_COMPAT = ("none", "ampere-plus", "same-compute-capability")
_TRT_DISTS = re.compile(r"^tensorrt(?:[-_]cu(\d+))?(?:[-_](?:libs|bindings))?$")


@dataclass(frozen=True)
class HostFacts:
    """What this machine offers a TensorRT engine. `gpu_cc` is 'major.minor' or None."""

    gpu_cc: str | None
    gpu_name: str | None
    tensorrt: str | None  # installed TensorRT version, None when absent
    cuda: str | None  # CUDA flavour of the TensorRT wheel, e.g. 'cuda12'
    os_arch: str
    note: str = ""  # why a fact is missing, in words (shown by `kiln plan` and the bootstrap)

    @property
    def sm(self) -> str | None:
        return sm_tag(self.gpu_cc) if self.gpu_cc else None

    def unusable(self) -> str | None:
        """Why no engine can be built or run here, or None when a GPU and TensorRT are present."""
        if self.gpu_cc is None:
            return f"no GPU: {self.note or 'none found'}"
        if self.tensorrt is None:
            return "no TensorRT: the tensorrt package is not installed (pip install 'modelkiln[tensorrt]')"
        return None


class Profiles(TypedDict):
    batch: dict[str, int]  # min, opt, max
    sequence: dict[str, int]


class EngineKey(TypedDict):
    """Everything an engine's bytes depend on. Its digest names the engine; see `family`."""

    schema: int
    onnx_sha256: str  # aggregate over the model file and its external data files
    onnx_files: dict[str, str]
    profiles: Profiles
    precision: str
    builder: dict[str, Any]  # workspace, optimization level, how precision was set
    plugins: dict[str, str]  # plugin library name -> sha256 (none today)
    code: str  # the trt stage's code version
    tensorrt: str
    cuda: str
    compute_capability: str
    device_name: str | None  # only in strict mode
    hardware_compatibility: str
    version_compatible: bool
    os_arch: str


class Sidecar(TypedDict):
    """engine.json: the key, its digest, and the engine file it describes."""

    key: EngineKey
    key_sha256: str
    family_sha256: str
    plan: str  # path of the engine file relative to the bundle root
    plan_size: int
    plan_sha256: str


_HOST_FIELDS = ("tensorrt", "cuda", "compute_capability", "device_name", "os_arch")


def key_digest(key: EngineKey) -> str:
    return sha256_bytes(canonical_json(dict(key)))


def family(key: EngineKey) -> str:
    """Digest of the key without its host part: engines of one family were built from the same
    model with the same settings, so one bundle may hold one per architecture."""
    return sha256_bytes(canonical_json({k: v for k, v in key.items() if k not in _HOST_FIELDS}))


def sm_tag(cc: str) -> str:
    """'9.0' -> 'sm90': the directory name of an architecture's engine."""
    major, _, minor = cc.partition(".")
    return f"sm{major}{minor or '0'}"


def platform_class(host: HostFacts, strict: bool = False) -> str:
    """The cache's platform class of an engine built here, e.g. 'sm90-trt10.3.0-cuda12'."""
    if host.unusable():
        return "none"
    name = f"-{re.sub(r'[^A-Za-z0-9]+', '_', host.gpu_name or '')}" if strict else ""
    return f"{host.sm}-trt{host.tensorrt}-{host.cuda or 'cuda-unknown'}{name}"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:4])


def _cc_ok(key: EngineKey, host: HostFacts) -> str | None:
    built, here = key["compute_capability"], host.gpu_cc or ""
    if key["hardware_compatibility"] == "ampere-plus":
        if _version(here) < (8, 0):
            return f"built hardware-compatible for Ampere and newer (sm80+), this GPU is {sm_tag(here)}"
        return None
    if built != here:
        return f"built for {sm_tag(built)}, this GPU is {sm_tag(here)}"
    return None


def mismatch(key: EngineKey, host: HostFacts) -> str | None:
    """Why an engine with `key` must not run on `host`, or None when it may."""
    gone = host.unusable()
    if gone:
        return gone
    if key["os_arch"] != host.os_arch:
        return f"built on {key['os_arch']}, this host is {host.os_arch}"
    built, here = key["tensorrt"], host.tensorrt or ""
    if key["version_compatible"]:
        if _version(here)[:1] != _version(built)[:1] or _version(here) < _version(built):
            return (f"built version-compatible with TensorRT {built}: needs {built.split('.')[0]}.x "
                    f"at {built} or later, this host has {here}")
    elif here != built:
        return f"built with TensorRT {built}, this host has {here}"
    if key["cuda"] != host.cuda:
        return f"built for {key['cuda']}, this host's TensorRT is for {host.cuda}"
    why = _cc_ok(key, host)
    if why:
        return why
    if key["device_name"] is not None and key["device_name"] != host.gpu_name:
        return f"built strictly for {key['device_name']}, this GPU is {host.gpu_name}"
    return None


def sidecar(key: EngineKey, plan_rel: str, plan_size: int, plan_sha256: str) -> Sidecar:
    return {"key": key, "key_sha256": key_digest(key), "family_sha256": family(key),
            "plan": plan_rel, "plan_size": plan_size, "plan_sha256": plan_sha256}


def dumps(side: Sidecar) -> bytes:
    return json.dumps(side, indent=2, sort_keys=True).encode() + b"\n"


def load(path: Path) -> Sidecar:
    """Read and check an engine.json; KilnError naming the file and what is wrong."""
    try:
        raw = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise KilnError(f"{path}: not a readable engine sidecar ({exc}); rebuild the trt stage") from None
    key = raw.get("key") if isinstance(raw, dict) else None
    if not isinstance(key, dict) or key.get("schema") != SCHEMA:
        raise KilnError(f"{path}: not a schema-{SCHEMA} engine sidecar; rebuild the trt stage")
    missing = sorted(set(EngineKey.__annotations__) - set(key))
    if missing:
        raise KilnError(f"{path}: engine key lacks {', '.join(missing)}; rebuild the trt stage")
    side: Sidecar = raw
    if side.get("key_sha256") != key_digest(side["key"]):
        raise KilnError(f"{path}: key_sha256 does not match its key (edited?); rebuild the trt stage")
    return side


# ---- host facts ------------------------------------------------------------------------------

def os_arch() -> str:
    return f"{platform.system().lower()}-{platform.machine().lower()}"


def _nvidia_smi() -> tuple[str | None, str | None, str]:
    """(compute capability, name, note) of GPU 0 from nvidia-smi."""
    from ..proc import run

    try:
        done = run(["nvidia-smi", "--query-gpu=compute_cap,name", "--format=csv,noheader"],
                   timeout=15, check=False)
    except KilnError as exc:  # not installed, or hung
        note = "nvidia-smi not found" if "not found" in str(exc) else str(exc)
        return None, None, _proc_driver(note)
    lines = [ln for ln in done.stdout.splitlines() if ln.strip()]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return None, None, f"nvidia-smi failed: {tail[0]}"
    cc, _, name = lines[0].partition(",")
    if not re.fullmatch(r"\d+\.\d+", cc.strip()):
        return None, name.strip() or None, f"nvidia-smi gave compute capability {cc.strip()!r}"
    return cc.strip(), name.strip() or None, ""


def _proc_driver(note: str) -> str:
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir() and any(gpus.iterdir()):
        return f"{note}; the NVIDIA driver lists a GPU in {gpus}, but without nvidia-smi its " \
               "compute capability is unknown (install the driver utilities)"
    return note


def installed_tensorrt() -> tuple[str | None, str | None]:
    """(version, CUDA flavour) of the installed TensorRT wheel, from package metadata only."""
    version, cuda = None, None
    for dist in metadata.distributions():
        name = (dist.name or "").lower()
        m = _TRT_DISTS.match(name)
        if not m:
            continue
        if name in ("tensorrt", "tensorrt-cu12", "tensorrt_cu12", "tensorrt-cu11", "tensorrt-cu13") \
                or version is None:
            version = dist.version
        if m.group(1):
            cuda = f"cuda{m.group(1)}"
    return version, cuda


@functools.cache
def probe_host() -> HostFacts:
    """This machine's facts, read once per process (nvidia-smi is a subprocess)."""
    cc, name, note = _nvidia_smi()
    version, cuda = installed_tensorrt()
    return HostFacts(cc, name, version, cuda, os_arch(), note)
