"""The TensorRT backend: the ONNX bundle (the fallback where no engine matches) plus engines/sm<cc>/
of every architecture built (this host's and other runners', gathered by the engines stage)."""
from __future__ import annotations

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
