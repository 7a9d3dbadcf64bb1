"""Frozen, typed form of a validated spec. Nothing past this boundary sees a dict.

Paths are absolute (resolved against the spec file's directory). `sections` keeps each top-level
spec section as canonical JSON so a stage can digest exactly the part of the spec it depends on.
Everything here is picklable so `doit -P process` can ship it to worker processes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import Problem
from .kinds import Embedding, Entities, Generation


@dataclass(frozen=True)
class Source:
    checkpoint: Path
    task: str  # multi-label-classification | single-label-classification | feature-extraction
    tokenizer: Path
    dtype: str | None  # None keeps the stored dtype


@dataclass(frozen=True)
class Labels:
    order: Path
    fields: Path
    names: tuple[str, ...]  # read from `order` during validation


@dataclass(frozen=True)
class Thresholds:
    strategy: str  # fixed | f1-optimal
    default: float
    values: tuple[tuple[str, float], ...]
    calibration: Path | None
    min_support: int
    max_length: int


@dataclass(frozen=True)
class Quantize:
    mode: str  # dynamic | static | auto (the int8 stage searches a fixed list of settings)
    weight_type: str  # int8 | uint8
    per_channel: bool
    reduce_range: bool
    op_types: tuple[str, ...] | None
    calibration: Path | None
    exclude_nodes: tuple[str, ...] = ()  # ONNX node names kept in float (not quantized)
    fuse: str = ""  # onnxruntime transformer-optimizer model type fused before quantizing ("": none)


@dataclass(frozen=True)
class Parity:
    atol: float
    max_decision_flip_rate: float
    samples: int | None


@dataclass(frozen=True)
class Onnx:
    opset: int | None  # None: the exporter's recommended opset for the architecture
    quantize: Quantize
    parity: Parity


@dataclass(frozen=True)
class TrtParity:
    atol: float
    rtol: float
    max_decision_flip_rate: float
    samples: int | None


@dataclass(frozen=True)
class TensorRT:
    precision: str  # fp32 | fp16 | int8 (int8: from the int8 stage's static Q/DQ model)
    when: str  # gpu-available | required (never: the section is None)
    workspace_mb: int | None
    optimization_level: int
    batch: tuple[int, int, int]  # min, opt, max
    sequence: tuple[int, int, int]
    hardware_compatibility: str  # none | ampere-plus | same-compute-capability
    version_compatible: bool
    strict_device_name: bool
    parity: TrtParity


@dataclass(frozen=True)
class StoreTarget:
    root: str  # may hold ${MODEL_STORE_ROOT}; expanded at publish time, not at load time
    agent: str  # may hold {backend}


@dataclass(frozen=True)
class Publish:
    s3: str | None
    store: StoreTarget | None
    oci: str | None = None  # REGISTRY/REPO:TAG template for the model artifact ({version}, ...)


@dataclass(frozen=True)
class ImageSpec:
    """The serving image (`image:` section): built for one backend on a digest-pinned base."""

    repository: str  # where `push: true` sends it, e.g. registry.example.com/models/registry
    base: str  # HOST/REPO@sha256:... or oci:PATH[@sha256:...] (a local layout, spec-relative)
    tag: str  # template with {name}, {version}, {backend}
    backend: str
    platform: str  # os/arch[/variant]
    push: bool
    python: str = "3.11"  # the base's Python: the ABI the environment's wheels are resolved for
    packages: tuple[str, ...] = ()  # pip requirements added to (or replacing) the defaults
    test: str = "auto"  # run the image in a container engine: auto | required | off
    libraries: str = "lock"  # lock: install the lock as a layer; base: the base carries them
    base_layout: Path | None = None  # the resolved directory of an `oci:` base


@dataclass(frozen=True)
class RegistryInfo:
    roles: tuple[str, ...]
    capabilities: tuple[str, ...]
    served_id: str | None


@dataclass(frozen=True)
class Card:
    """The spec's `card:` section: what the model card says beyond what the build computed."""

    intended_use: str = ""
    limitations: str = ""
    license: str | None = None  # the card front matter's license (SPDX / Hugging Face id)
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Bundle:
    name: str
    version: str  # may hold {git_commit}; see model.version.resolve
    description: str
    spec_path: Path
    root: Path  # the project root: paths may not escape it; build/ and dist/ live here
    source: Source
    labels: Labels
    thresholds: Thresholds
    pytorch: bool
    onnx: Onnx | None
    tensorrt: TensorRT | None
    publish: Publish
    registry: RegistryInfo
    metadata: tuple[tuple[str, str | int | float | bool], ...]
    sections: tuple[tuple[str, str], ...]  # top-level section -> canonical JSON
    image: ImageSpec | None = None
    card: Card = Card()
    embedding: Embedding | None = None  # source.task feature-extraction (model/kinds.py)
    generation: Generation | None = None  # source.task text-generation
    entities: Entities | None = None  # source.task token-classification
    enabled: tuple[str, ...] = ()  # enabled backends, modelkiln's and plug-ins' (modelkiln.backends)

    def section(self, key: str) -> str:
        """Canonical JSON of one top-level spec section ('null' when absent)."""
        return dict(self.sections).get(key, "null")

    @property
    def backends(self) -> tuple[str, ...]:
        """Enabled backends that produce a bundle, in a fixed order (the built-ins', then
        plug-ins' by name); the built-ins among them also have their typed section above."""
        return self.enabled


@dataclass(frozen=True)
class BrokenSpec:
    """A spec that does not validate, kept so that only its own tasks fail: in a repository of
    many bundles one broken spec must not stop the others from being listed or built.
    `name` is the bundle name its tasks take (the spec's `name:` when readable, else the file stem)."""

    name: str
    spec_path: Path
    problems: tuple[Problem, ...]

    @property
    def message(self) -> str:
        count = len(self.problems)
        lines = [f"{self.spec_path.name} does not validate ({count} problem{'s' if count != 1 else ''}; "
                 "fix the spec, `kiln validate` lists them):", *map(str, self.problems)]
        return "\n".join(lines)
