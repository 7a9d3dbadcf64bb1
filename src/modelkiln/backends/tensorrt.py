"""The TensorRT backend: the ONNX bundle (the fallback where no engine matches) plus engines/sm<cc>/
of every architecture built (this host's and other runners', gathered by the engines stage)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..artifacts import names

NAME = "tensorrt"
DOC = "TensorRT engines per GPU architecture, with the ONNX bundle as the fallback"
STAGES: tuple[str, ...] = ("trt", "engines", "trtparity")
PACKS: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("weights", None), ("tokenizer", None), ("labels", None), ("thresholds", None),
    ("int8", None), ("engines", ("engines/",)))
REPORTS: tuple[str, ...] = ("parity", "smoke", "engines", "trtparity")
GRAPH: str | None = "onnx"
TOOLS: tuple[str, ...] = ("modelkiln", "torch", "transformers", "tokenizers", "safetensors",
                          "optimum", "optimum-onnx", "onnx", "onnxruntime", "tensorrt")
URI_ENV = "MODEL_BUNDLE_S3_URI_TENSORRT"
MODEL_DIR = False
EXPORTS: tuple[tuple[str, str], ...] = (("REGISTRY_ONNX_MODEL_PATH", names.ONNX_INT8),)
IMAGE_PACKAGES: tuple[str, ...] = ()  # no serving image of its own (image.backend: pytorch|onnx)
NEEDS: tuple[str, ...] = ("onnx",)  # engines are built from the ONNX model
LIBRARY = "tensorrt"
MODEL_FILE = names.ONNX_INT8  # the fallback every host can run; engines/ beside it
FORMAT = "tensorrt"
ENGINES = True  # the runtime exports REGISTRY_TRT_ENGINE_PATH where an engine matches the host


def enabled(section: Mapping[str, Any], /) -> bool:
    """On unless `enabled: false` or `when: never`."""
    return section.get("enabled", True) is not False and section.get("when") != "never"


def needs_gpu(section: Mapping[str, Any], /) -> bool:
    """Under `when: gpu-available` (the default) engines are built only where a GPU is usable;
    `when: always` builds them anyway (and fails without one)."""
    return bool(section.get("when", "gpu-available") == "gpu-available")
