"""The engine builder behind a small interface: TensorRT's Python API, or a fake for tests.

`EngineBuilder` is what the trt stage needs of TensorRT: its version, a serialized engine from an
ONNX file and settings, and logits from that engine for the parity rows. `TensorRTBuilder` is the
real one (TensorRT 10 and later, imported only when it is used); `FakeBuilder` stands in where
there is no GPU: its "engine" is a small JSON document and its logits are onnxruntime's on the
same model, rounded through float16 when fp16 is asked for, so everything around the builder
(keys, sidecars, parity, packaging, the bootstrap's choice) can be tested on any machine.

TensorRT 10 takes precision as builder flags (FP16; INT8 here only with Q/DQ in the graph);
TensorRT 11 removed them and builds strongly typed networks, precision coming from the graph
(the ONNX lint checks the graph can give what the spec asks). Versions before 10 are refused.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from ..artifacts.digest import canonical_json, sha256_file
from ..artifacts.engine_key import HostFacts, Profiles
from ..errors import BuildError

MIN_MAJOR = 10
FAKE_MAGIC = b"KILN-FAKE-ENGINE\n"


@dataclass(frozen=True)
class BuildRequest:
    onnx: Path
    precision: str  # fp32 | fp16 | int8
    profiles: Profiles
    workspace_mb: int | None
    optimization_level: int
    hardware_compatibility: str  # none | ampere-plus | same-compute-capability
    version_compatible: bool
    timing_cache: Path  # read before, written after: kept per platform and engine family
    # an encoder kind's per-input min/opt/max shapes (stages/trt_kinds); None: every input is
    # batch x sequence from `profiles` (the classifiers)
    shapes: dict[str, dict[str, list[int]]] | None = None


@dataclass(frozen=True)
class Built:
    plan: bytes
    precision_mode: str  # "flags" (TensorRT 10) | "strongly-typed" (11 and later)


class EngineBuilder(Protocol):
    name: str

    def version(self) -> str: ...
    def build(self, request: BuildRequest) -> Built: ...
    def infer(self, plan: bytes, batch: Mapping[str, Any]) -> Any: ...


def major(version: str) -> int:
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def refusal(version: str, request: BuildRequest) -> str | None:
    """What this TensorRT version cannot do for `request`, in words; None when it can."""
    m = major(version)
    if m < MIN_MAJOR:
        return (f"TensorRT {version} is older than {MIN_MAJOR}; modelkiln builds with TensorRT "
                f"{MIN_MAJOR} and later (pip install 'modelkiln[tensorrt]')")
    if request.version_compatible and request.precision == "int8" and m < 11:
        return (f"TensorRT {version} cannot build a version-compatible engine from int8 Q/DQ "
                "here; set version_compatible: false or precision: fp16")
    return None


def precision_mode(version: str) -> str:
    return "strongly-typed" if major(version) >= 11 else "flags"


class FakeBuilder:
    """Builds JSON "engines" and answers with onnxruntime: for tests on machines without a GPU."""

    name = "fake"

    def __init__(self, version: str = "10.3.0"):
        self._version = version

    def version(self) -> str:
        return self._version

    def build(self, request: BuildRequest) -> Built:
        why = refusal(self._version, request)
        if why:
            raise BuildError(why)
        settings = {k: v for k, v in asdict(request).items() if k not in ("onnx", "timing_cache")}
        doc = {"onnx": str(request.onnx), "onnx_sha256": sha256_file(request.onnx),
               "tensorrt": self._version, "settings": settings}
        old = request.timing_cache.read_bytes() if request.timing_cache.is_file() else b""
        request.timing_cache.parent.mkdir(parents=True, exist_ok=True)
        request.timing_cache.write_bytes(old + b"timing\n")  # grows per build, like a real one
        return Built(FAKE_MAGIC + canonical_json(doc), precision_mode(self._version))

    def infer(self, plan: bytes, batch: Mapping[str, Any]) -> Any:
        import numpy as np

        from .infer import ort_logits

        doc = json.loads(plan[len(FAKE_MAGIC):])
        if doc["settings"].get("shapes"):  # an encoder kind: its graph's first output
            from .trt_kinds import onnx_outputs

            session_out = _first_output(Path(doc["onnx"]))
            logits = onnx_outputs(Path(doc["onnx"]), dict(batch), session_out)
        else:
            logits = ort_logits(Path(doc["onnx"]), dict(batch))
        if doc["settings"]["precision"] == "fp16":
            logits = logits.astype(np.float16).astype(np.float32)
        return logits


def _first_output(model: Path) -> str:
    from .infer import ort_session

    return str(ort_session(model).get_outputs()[0].name)


class TensorRTBuilder:  # pragma: no cover - needs an NVIDIA GPU and TensorRT
    """TensorRT's Python API: builder, ONNX parser, one optimization profile, timing cache."""

    name = "tensorrt"

    def __init__(self) -> None:
        import tensorrt as trt

        self.trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)

    def version(self) -> str:
        return str(self.trt.__version__)

    def build(self, request: BuildRequest) -> Built:
        trt, version = self.trt, self.version()
        why = refusal(version, request)
        if why:
            raise BuildError(why)
        builder = trt.Builder(self.logger)
        network = builder.create_network(0)  # explicit batch is the only mode in 10+
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(request.onnx)):  # reads external data beside it
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BuildError(f"TensorRT's ONNX parser refused {request.onnx.name}: {errors[:600]}")
        config = builder.create_builder_config()
        if request.workspace_mb:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, request.workspace_mb << 20)
        config.builder_optimization_level = request.optimization_level
        if precision_mode(version) == "flags":
            if request.precision == "fp16":
                config.set_flag(trt.BuilderFlag.FP16)
            elif request.precision == "int8":  # explicit quantization: scales come from Q/DQ
                config.set_flag(trt.BuilderFlag.INT8)
        self._compat(config, request)
        config.add_optimization_profile(self._profile(builder, network, request.profiles,
                                                      request.shapes))
        cache = config.create_timing_cache(request.timing_cache.read_bytes()
                                           if request.timing_cache.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise BuildError("TensorRT built no engine (see its log above); check the profile "
                             "ranges and workspace_mb")
        request.timing_cache.parent.mkdir(parents=True, exist_ok=True)
        request.timing_cache.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
        return Built(bytes(memoryview(plan)), precision_mode(version))

    def _compat(self, config: Any, request: BuildRequest) -> None:
        trt = self.trt
        level = {"ampere-plus": "AMPERE_PLUS",
                 "same-compute-capability": "SAME_COMPUTE_CAPABILITY"}.get(
            request.hardware_compatibility)
        if level is not None:
            if not hasattr(trt.HardwareCompatibilityLevel, level):
                raise BuildError(f"TensorRT {self.version()} has no hardware compatibility level "
                                 f"{request.hardware_compatibility}; use none or ampere-plus")
            config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, level)
        if request.version_compatible:
            config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)

    @staticmethod
    def _profile(builder: Any, network: Any, profiles: Profiles,
                 shapes: dict[str, dict[str, list[int]]] | None = None) -> Any:
        profile = builder.create_optimization_profile()
        b, s = profiles["batch"], profiles["sequence"]
        for i in range(network.num_inputs):
            name = network.get_input(i).name
            if shapes is not None:  # an encoder kind: its own shape per input
                if name not in shapes:
                    raise BuildError(f"the ONNX graph's input {name!r} has no profile shape "
                                     f"(the kind gives {sorted(shapes)})")
                profile.set_shape(name, *(tuple(shapes[name][lv]) for lv in ("min", "opt", "max")))
                continue
            profile.set_shape(name, (b["min"], s["min"]), (b["opt"], s["opt"]), (b["max"], s["max"]))
        return profile

    def infer(self, plan: bytes, batch: Mapping[str, Any]) -> Any:
        import numpy as np
        import torch

        trt = self.trt
        engine = trt.Runtime(self.logger).deserialize_cuda_engine(plan)
        context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        keep = []
        for name in names:
            if name in outputs:
                continue
            dtype = {trt.int32: torch.int32, trt.float32: torch.float32,
                     trt.float16: torch.float16}.get(engine.get_tensor_dtype(name), torch.int64)
            tensor = torch.as_tensor(np.asarray(batch[name])).to("cuda", dtype).contiguous()
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
            keep.append(tensor)
        half = engine.get_tensor_dtype(outputs[0]) == trt.float16  # strongly typed fp16 graph
        out = torch.empty(tuple(context.get_tensor_shape(outputs[0])),
                          dtype=torch.float16 if half else torch.float32, device="cuda")
        context.set_tensor_address(outputs[0], out.data_ptr())
        stream = torch.cuda.current_stream()
        if not context.execute_async_v3(stream.cuda_stream):
            raise BuildError("TensorRT could not run the engine on the parity rows")
        stream.synchronize()
        return out.float().cpu().numpy()


def select(host: HostFacts) -> EngineBuilder:
    """The builder for this host: TensorRT where a GPU and TensorRT are present."""
    why = host.unusable()
    if why:
        raise BuildError(f"cannot build a TensorRT engine here: {why}")
    try:
        return TensorRTBuilder()
    except Exception as exc:  # installed but unusable (CUDA libraries, driver)
        raise BuildError(f"TensorRT {host.tensorrt} is installed but does not load: "
                         f"{type(exc).__name__}: {exc}") from None
