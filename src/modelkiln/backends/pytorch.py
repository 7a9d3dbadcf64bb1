"""The PyTorch backend: the safetensors checkpoint, tokenizer, labels and thresholds."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..artifacts import names

NAME = "pytorch"
DOC = "safetensors weights served with transformers"
STAGES: tuple[str, ...] = ()  # it packs the shared stages' outputs only
PACKS: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("weights", None), ("tokenizer", None), ("labels", None), ("thresholds", None))
REPORTS: tuple[str, ...] = ()
GRAPH: str | None = None  # its inputs are what its tokenizer produces
TOOLS: tuple[str, ...] = ("modelkiln", "torch", "transformers", "tokenizers", "safetensors")
URI_ENV = "MODEL_BUNDLE_S3_URI_PYTORCH"
MODEL_DIR = True
EXPORTS: tuple[tuple[str, str], ...] = ()
IMAGE_PACKAGES: tuple[str, ...] = ("numpy", "safetensors", "tokenizers", "torch", "transformers")
NEEDS: tuple[str, ...] = ()
LIBRARY = "transformers"
MODEL_FILE = names.WEIGHTS
FORMAT = "safetensors"
ENGINES = False


def enabled(section: Mapping[str, Any], /) -> bool:
    """On unless its section says `enabled: false`."""
    return section.get("enabled", True) is not False


def needs_gpu(section: Mapping[str, Any], /) -> bool:
    return False
