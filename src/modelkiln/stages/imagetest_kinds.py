"""What `imagetest` sends the serving image of a non-classifier bundle, and how it compares.

The classifiers' rows are the smoke texts and calibration texts, compared label for label with
scores within the parity tolerance (stages/imagetest.py). Each other task kind answers something
else through `predict` (runtime/predict.py), so its rows come from its own calibration section
and its answers are compared by what they are:

- feature-extraction: the calibration texts; every vector must have the same dimension, and the
  largest component difference (and the smallest cosine, reported) is held to the tolerance;
- token-classification: the calibration texts; the entities must be the same spans with the same
  labels, their scores within the tolerance;
- text-generation: the calibration prompts, each for `generation.steps` new tokens; the tokens,
  the text and the finish reason must be equal (greedy decoding has no tolerance);
- image-classification: the calibration rows' image files, the calibration file's directory bound
  read-only into the container; compared as a classifier's answers (labels, scores).

Every compare returns (rows that differ, largest numeric difference), the two figures the gate
holds: a differing row fails it whatever the tolerance.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import BuildError
from ..model.bundle import Bundle
from ..model.calibration import json_texts
from ..model.files import BadFile
from ..model.kinds import (
    FEATURE_EXTRACTION,
    IMAGE_CLASSIFICATION,
    TEXT_GENERATION,
    TOKEN_CLASSIFICATION,
)

Answers = list[dict[str, Any]]


def calibration(bundle: Bundle) -> Path | None:
    """The file the kind's rows are read from (None: a classifier, the thresholds' file)."""
    task = bundle.source.task
    if task == FEATURE_EXTRACTION and bundle.embedding is not None:
        return bundle.embedding.calibration
    if task == TOKEN_CLASSIFICATION and bundle.entities is not None:
        return bundle.entities.calibration
    if task == TEXT_GENERATION and bundle.generation is not None:
        return bundle.generation.calibration
    return None


def handles(bundle: Bundle) -> bool:
    """Whether this module makes the bundle's rows (a non-classifier text kind)."""
    return bundle.source.task in COMPARE


def _texts(path: Path, keys: tuple[str, ...], limit: int) -> list[str]:
    """The first `limit` rows' text under the first of `keys` a row has (JSONL)."""
    try:
        out = json_texts(path, keys, f'{{"{keys[0]}": "..."}}', limit)
    except BadFile as exc:
        raise exc.build_error() from None
    if not out:
        raise BuildError(f"{path}: no rows to send the serving image")
    return out


def requests(bundle: Bundle, limit: int) -> list[str]:
    """The request lines (JSON) for the bundle's `predict`, from its calibration rows."""
    path = calibration(bundle)
    if path is None:
        raise BuildError(f"{bundle.spec_path.name}: {bundle.source.task} names no calibration "
                         "rows for the image test")
    task = bundle.source.task
    if task == TEXT_GENERATION:
        assert bundle.generation is not None
        steps = bundle.generation.steps
        return [json.dumps({"prompt": p, "max_new_tokens": steps})
                for p in _texts(path, ("prompt", "text"), limit)]
    return [json.dumps({"text": t}) for t in _texts(path, ("text",), limit)]


IMAGE_MOUNT = "/opt/kiln-calibration"  # where the calibration directory is bound (read-only)


def takes_images(bundle: Bundle) -> bool:
    """Whether the bundle's `predict` reads image files ({"image": PATH} rows)."""
    return bundle.source.task == IMAGE_CLASSIFICATION


def image_requests(bundle: Bundle, limit: int) -> tuple[list[str], list[str], dict[str, str]]:
    """An image classifier's rows: (the container's lines, naming the images under
    IMAGE_MOUNT; the host's lines, naming the same files where they are; the mount: the
    calibration file's directory -> IMAGE_MOUNT). Image paths are relative to the calibration
    file, as vision_parity reads them, and must lie under its directory."""
    path = bundle.thresholds.calibration
    if path is None:
        raise BuildError(f"{bundle.spec_path.name}: an image classifier's image test needs "
                         "thresholds.calibration (rows naming image files)")
    root = path.parent.resolve()
    inside, host = [], []
    for rel in _texts(path, ("image",), limit):
        where = (root / rel).resolve()
        try:
            under = where.relative_to(root).as_posix()
        except ValueError:
            raise BuildError(f"{path}: image {rel!r} lies outside {root}; the image test binds "
                             "only the calibration file's directory into the container") from None
        inside.append(json.dumps({"image": f"{IMAGE_MOUNT}/{under}"}))
        host.append(json.dumps({"image": str(where)}))
    return inside, host, {str(root): IMAGE_MOUNT}


def _refuse(want: dict[str, Any], have: dict[str, Any]) -> BuildError:
    return BuildError(f"the container answered {json.dumps(have)[:200]} where the build answers "
                      f"{json.dumps(want)[:200]}")


def compare_embeddings(expected: Answers, got: Answers, atol: float) -> tuple[int, float]:
    """Rows whose vector has another dimension or a cosine below 1 - atol; the largest
    component difference."""
    differ, worst = 0, 0.0
    for want, have in zip(expected, got, strict=True):
        a, b = want.get("embedding"), have.get("embedding")
        if not isinstance(b, list) or not isinstance(a, list):
            raise _refuse(want, have)
        if len(a) != len(b):
            differ += 1
            continue
        worst = max([worst, *(abs(float(x) - float(y)) for x, y in zip(a, b, strict=True))])
        na = math.sqrt(sum(float(x) ** 2 for x in a))
        nb = math.sqrt(sum(float(y) ** 2 for y in b))
        cos = sum(float(x) * float(y) for x, y in zip(a, b, strict=True)) / max(na * nb, 1e-12)
        differ += cos < 1.0 - atol
    return differ, worst


def compare_entities(expected: Answers, got: Answers, atol: float) -> tuple[int, float]:
    """Rows whose entities differ in span or label; the largest entity score difference."""
    differ, worst = 0, 0.0
    for want, have in zip(expected, got, strict=True):
        a, b = want.get("entities"), have.get("entities")
        if not isinstance(b, list) or not isinstance(a, list):
            raise _refuse(want, have)
        spans_a = [(e["entity"], e["start"], e["end"]) for e in a]
        spans_b = [(e.get("entity"), e.get("start"), e.get("end")) for e in b]
        if spans_a != spans_b:
            differ += 1
            continue
        worst = max([worst, *(abs(float(x["score"]) - float(y.get("score", math.inf)))
                              for x, y in zip(a, b, strict=True))])
    return differ, worst


def compare_generations(expected: Answers, got: Answers, atol: float) -> tuple[int, float]:
    """Rows whose tokens, text or finish differ (greedy decoding is exact); no scores."""
    differ = 0
    for want, have in zip(expected, got, strict=True):
        if "tokens" not in have:
            raise _refuse(want, have)
        differ += any(have.get(k) != want.get(k) for k in ("tokens", "text", "finish"))
    return differ, 0.0


COMPARE: dict[str, Callable[[Answers, Answers, float], tuple[int, float]]] = {
    FEATURE_EXTRACTION: compare_embeddings,
    TOKEN_CLASSIFICATION: compare_entities,
    TEXT_GENERATION: compare_generations,
}
WHAT = {FEATURE_EXTRACTION: "their vector", TOKEN_CLASSIFICATION: "their entities",
        TEXT_GENERATION: "their generated tokens"}


def compare(task: str, expected: Answers, got: Answers, atol: float) -> tuple[int, float]:
    """(rows that differ, largest numeric difference) for the kind's answers."""
    if len(got) != len(expected):
        raise BuildError(f"the container answered {len(got)} lines for {len(expected)} rows")
    for want, have in zip(expected, got, strict=True):
        if "error" in have:
            raise _refuse(want, have)
    return COMPARE[task](expected, got, atol)
