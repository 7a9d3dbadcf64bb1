"""Task kinds with a stage set of their own: what each adds to, and takes from, the shared graph.

A classifier bundle runs the shared stages as they are. Any other `source.task` is a `Kind`: it
names the shared stages it does not use (labels, thresholds, the decision gates), adds its own
(its parity gate), exports its graph through the shared `onnx` stage with its own exporter (so
int8, external-data checks and the card's input table are shared), and tells `package` what the
bundle holds and how `predict` answers. The shared stages ask `kind_of(bundle)` instead of
branching on task names.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...model.bundle import Bundle
from ..base import Report, RunContext

Exporter = Callable[[Bundle, Path, Path, "int | None"], None]  # bundle, weights dir, out dir, opset


@dataclass(frozen=True)
class Kind:
    task: str  # the source.task value
    drops: frozenset[str]  # shared stages this kind does not plan
    auto_class: str  # transformers Auto class that loads the converted weights
    output: str  # the exported graph's output name
    export: Exporter
    export_params: Callable[[Bundle], dict[str, Any]]  # what shapes the export (onnx params)
    contents: dict[str, tuple[tuple[str, tuple[str, ...] | None], ...]]  # backend -> packed stages
    reports: dict[str, tuple[str, ...]]  # backend -> stages whose report goes in the manifest
    signature: Callable[[RunContext], dict[str, Any]]
    card: Callable[[RunContext, str, str, dict[str, Report], dict[str, str]], str]
    head: bool = False  # config.json carries a classification head (labels checked against it)
    keep_shards: bool = False  # ship a sharded safetensors checkpoint sharded
    # shared stages planned only to be shown skipped, with the reason (`kiln plan`): a backend
    # the spec may name whose stage cannot build this kind (text-generation's TensorRT engine)
    skips: tuple[tuple[str, str], ...] = ()


def kind_of(bundle: Bundle) -> Kind | None:
    """The bundle's task kind, or None for the classifiers (the shared stages as they are)."""
    from ...model.kinds import (
        FEATURE_EXTRACTION,
        IMAGE_CLASSIFICATION,
        TEXT_GENERATION,
        TOKEN_CLASSIFICATION,
    )

    if bundle.source.task == FEATURE_EXTRACTION:
        from .embedding import KIND

        return KIND
    if bundle.source.task == TOKEN_CLASSIFICATION:
        from .ner import KIND as NER

        return NER
    if bundle.source.task == TEXT_GENERATION:
        from .generation import KIND as GENERATION

        return GENERATION
    if bundle.source.task == IMAGE_CLASSIFICATION:
        from .vision import KIND as VISION

        return VISION
    return None


def planned(bundle: Bundle, stage: str) -> bool:
    """Whether a shared stage takes part in this bundle's graph."""
    kind = kind_of(bundle)
    return kind is None or stage not in kind.drops


def skip_reason(bundle: Bundle, stage: str) -> str | None:
    """Why a shared stage that this bundle's kind plans never runs for it (None: it may)."""
    kind = kind_of(bundle)
    return dict(kind.skips).get(stage) if kind is not None else None


def backend_config(bundle: Bundle, served_model_id: str) -> dict[str, Any]:
    """What a registry entry records for its serving backend ({} when the kind records none)."""
    if bundle.generation is None:
        return {}
    from .generation import backend_config as vllm

    return vllm(bundle, served_model_id)
