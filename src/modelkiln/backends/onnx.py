"""The ONNX backend: the int8 ONNX model beside the PyTorch files, gated by parity and smoke."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..artifacts import names

NAME = "onnx"
DOC = "int8 ONNX model served with onnxruntime, gated by parity and a smoke test"
STAGES: tuple[str, ...] = ("onnx", "int8", "parity", "smoke")
PACKS: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("weights", None), ("tokenizer", None), ("labels", None), ("thresholds", None),
    ("int8", None))  # the int8 model and, past 2 GB, its external data file
REPORTS: tuple[str, ...] = ("parity", "smoke")
GRAPH: str | None = "onnx"
TOOLS: tuple[str, ...] = ("modelkiln", "torch", "transformers", "tokenizers", "safetensors",
                          "optimum", "optimum-onnx", "onnx", "onnxruntime")
URI_ENV = "MODEL_BUNDLE_S3_URI_ONNX"
MODEL_DIR = False
EXPORTS: tuple[tuple[str, str], ...] = (("REGISTRY_ONNX_MODEL_PATH", names.ONNX_INT8),)
IMAGE_PACKAGES: tuple[str, ...] = ("numpy", "onnxruntime", "tokenizers")
NEEDS: tuple[str, ...] = ()
LIBRARY = "onnx"
MODEL_FILE = names.ONNX_INT8
FORMAT = "onnx"
ENGINES = False


def enabled(section: Mapping[str, Any], /) -> bool:
    """On unless its section says `enabled: false`."""
    return section.get("enabled", True) is not False


def needs_gpu(section: Mapping[str, Any], /) -> bool:
    return False
