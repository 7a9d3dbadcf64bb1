"""The `toy` backend: the PyTorch bundle's files plus the toystamp stage's output."""
from __future__ import annotations

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
IMAGE_PACKAGES: tuple[str, ...] = ()
