"""The `toy` backend: the PyTorch bundle's files plus the toystamp stage's output.

Everything modelkiln does for it, it asks this module: what to pack (toy.txt), what the runtime
exports (REGISTRY_TOY_STAMP_PATH, in `kiln bootstrap` and in the serving image's environment),
what the serving image needs (its IMAGE_PACKAGES, this package among them), what the model card
and the OCI model artifact say about it."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

NAME = "toy"
DOC = "the PyTorch files plus a stamp (a plug-in example)"
STAGES: tuple[str, ...] = ("toystamp",)  # the stages it adds to the graph
PACKS: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("weights", None), ("tokenizer", None), ("labels", None), ("thresholds", None),
    ("toystamp", None))
REPORTS: tuple[str, ...] = ("toystamp",)  # its report goes into the manifest's checks
GRAPH: str | None = None
TOOLS: tuple[str, ...] = ("modelkiln", "kiln-toy")
URI_ENV = "MODEL_BUNDLE_S3_URI_TOY"  # the runtime's variable for where it is published
MODEL_DIR = True  # the runtime exports REGISTRY_MODEL_DIR (a transformers checkpoint)
EXPORTS: tuple[tuple[str, str], ...] = (("REGISTRY_TOY_STAMP_PATH", "toy.txt"),)
# the serving image's environment: what predict runs a checkpoint with, and this package
IMAGE_PACKAGES: tuple[str, ...] = ("numpy", "safetensors", "tokenizers", "torch", "transformers",
                                   "kiln-toy")
NEEDS: tuple[str, ...] = ("pytorch",)  # built beside the PyTorch bundle: --skip pytorch skips it
LIBRARY = "kiln-toy"  # the model card's library_name
MODEL_FILE = "toy.txt"  # the file the model card names as its model
FORMAT = "toystamp"  # what an OCI model artifact's config records as its format
ENGINES = False  # no per-host engines to choose at bootstrap


def enabled(section: Mapping[str, Any], /) -> bool:
    """Off with `enabled: false` or `greeting: ""` (a toy switch of its own)."""
    return section.get("enabled", True) is not False and section.get("greeting") != ""


def needs_gpu(section: Mapping[str, Any], /) -> bool:
    return False
