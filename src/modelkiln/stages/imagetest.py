"""imagetest: run the serving image in a real container engine and gate on its answers.

The image the `image` stage wrote is loaded into the engine at DOCKER_HOST (dockerd, or podman's
docker-compatible service) from the layout itself, then run with no network:

1. one smoke row alone: the time from container start to its first answer line is the image's
   start-up figure;
2. the smoke rows and the calibration rows (`parity.samples` caps them), through `predict` on
   stdin, as a serving caller would.

The expected answers come from the same bundle run on this host by the same entrypoint
(`python -m modelkiln.runtime predict DIR` over the unpacked `bundle.tar.gz`): every row's labels
must be identical (the shipped thresholds, decisions.py's rule) and every score within the
backend's parity tolerance. Another task kind sends its own calibration rows and compares its
own answers (imagetest_kinds: vectors, entities, generated tokens). The report (image digest,
figures) goes into the stamp and `imagetest.json`; publishing refuses an image whose digest is
not the one that passed.

Without an engine the task is skipped with the reason (`kiln plan` shows it) when `image.test` is
auto, fails with one line when it is `required`, and is not planned when it is `off`.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..artifacts import manifest as mf
from ..artifacts.oci.media import IMAGE_TAG
from ..errors import BuildError
from ..model.bundle import Bundle
from ..model.calibration import read_rows
from ..model.files import BadFile
from ..model.version import resolve
from ..paths import Layout
from .base import Report, RunContext, StagePlan, params
from .smoke import SAMPLES

NAME = "imagetest"
DOC = "run the serving image in a container engine; its answers must match the build"
READS: tuple[str, ...] = ("image", "package")
TOOLS: tuple[str, ...] = ()
PLATFORM: str | None = None
CODE_VERSION = "1"
REPORT = "imagetest.json"
WRITES: tuple[str, ...] | None = (REPORT,)  # what a restored action record may hold
OPTIONAL: tuple[str, ...] = ()  # outputs a run may leave out (stages.base.Stage)
DEFAULT_ATOL = 1e-4
DEFAULT_ROWS = 200


def plan(bundle: Bundle, layout: Layout) -> list[StagePlan]:
    img = bundle.image
    if img is None or img.test == "off" or img.backend not in bundle.backends:
        return []
    from .engine import engine_hint

    version = resolve(bundle.version, bundle.root)
    backend, name = img.backend, bundle.name
    from . import imagetest_kinds as kinds

    cal = kinds.calibration(bundle) if kinds.handles(bundle) else bundle.thresholds.calibration
    p = StagePlan(
        task=f"imagetest:{name}-{backend}", stage="imagetest", bundle=name,
        doc=f"run {name}'s serving image in a container engine; its answers must match the build",
        out_dir=layout.stage_dir(name, f"imagetest-{backend}"),
        stamp=layout.stamp(name, f"imagetest-{backend}"),
        inputs=_inputs(bundle, cal),
        upstream=(f"image:{name}-{backend}", f"package:{name}-{backend}"),
        params=params(CODE_VERSION, backend=backend, atol=_atol(bundle), rows=_rows(bundle),
                      samples=list(SAMPLES), required=img.test == "required"),
        backend=backend, extra=(("version", version),))
    why = engine_hint() if img.test == "auto" else None
    return [dataclasses.replace(p, extra=(*p.extra, ("skip", why))) if why else p]


def _inputs(bundle: Bundle, cal: Path | None) -> tuple[Path, ...]:
    """The calibration file, and for an image classifier the image files its rows name (an
    image edited in place reruns the test, as it reruns vision_parity)."""
    if cal is None:
        return ()
    from . import imagetest_kinds as kinds

    if kinds.takes_images(bundle):
        from .vision_parity import image_inputs

        return (cal, *image_inputs(cal, _rows(bundle)))
    return (cal,)


def _atol(bundle: Bundle) -> float:
    return bundle.onnx.parity.atol if bundle.onnx is not None else DEFAULT_ATOL


def _rows(bundle: Bundle) -> int:
    samples = bundle.onnx.parity.samples if bundle.onnx is not None else None
    return int(samples or DEFAULT_ROWS)


def rows_for(ctx: RunContext, labels: tuple[str, ...]) -> list[str]:
    """The smoke texts, then the calibration texts (capped), as predict's JSON lines; another
    task kind's own rows (imagetest_kinds)."""
    from . import imagetest_kinds as kinds

    if kinds.handles(ctx.bundle):
        return kinds.requests(ctx.bundle, _rows(ctx.bundle))
    texts = list(SAMPLES)
    cal = ctx.bundle.thresholds.calibration
    if cal is not None:
        try:
            texts += list(read_rows(cal, labels, _rows(ctx.bundle)).texts)
        except BadFile as exc:
            raise exc.build_error() from None
    return [json.dumps({"text": t}) for t in texts]


def on_host(dist: Path, lines: list[str]) -> tuple[list[dict[str, Any]], float]:
    """The answers of the packaged bundle through predict on this host; (answers, seconds)."""
    from ..artifacts.extract import safe_extract

    with tempfile.TemporaryDirectory(prefix="kiln-imagetest-") as tmp:
        safe_extract(dist / mf.ARCHIVE, Path(tmp) / "bundle")
        start = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "modelkiln.runtime", "predict",
                               str(Path(tmp) / "bundle")], input="\n".join(lines) + "\n",
                              capture_output=True, text=True, timeout=900)
        took = time.monotonic() - start
    if done.returncode != 0:
        raise BuildError(f"predict on this host failed ({done.returncode}): "
                         f"{done.stderr.strip()[-300:]}")
    return [json.loads(x) for x in done.stdout.splitlines()], took


def compare(expected: list[dict[str, Any]], got: list[dict[str, Any]],
            atol: float) -> tuple[int, float]:
    """(rows whose labels differ, largest score difference); BuildError on a malformed answer."""
    if len(got) != len(expected):
        raise BuildError(f"the container answered {len(got)} lines for {len(expected)} rows")
    differ, worst = 0, 0.0
    for want, have in zip(expected, got, strict=True):
        if "error" in have or set(have.get("scores", {})) != set(want["scores"]):
            raise BuildError(f"the container answered {json.dumps(have)[:200]} where the build "
                             f"answers {json.dumps(want)[:200]}")
        differ += have["labels"] != want["labels"]
        worst = max([worst, *(abs(float(have["scores"][k]) - float(v))
                              for k, v in want["scores"].items())])
    return differ, worst


def _compare(bundle: Bundle, expected: list[dict[str, Any]],
             got: list[dict[str, Any]]) -> tuple[int, float]:
    """The classifiers' compare, or the task kind's (imagetest_kinds)."""
    from . import imagetest_kinds as kinds

    if kinds.handles(bundle):
        return kinds.compare(bundle.source.task, expected, got, _atol(bundle))
    return compare(expected, got, _atol(bundle))


def _what(bundle: Bundle) -> str:
    from . import imagetest_kinds as kinds

    return kinds.WHAT.get(bundle.source.task, "labels")


def _answers(stdout: str) -> list[dict[str, Any]]:
    try:
        return [json.loads(x) for x in stdout.splitlines() if x.strip()]
    except ValueError:
        raise BuildError(f"the container wrote output that is not JSON lines: {stdout[:200]!r}") \
            from None


def run(ctx: RunContext) -> Report:
    from . import engine
    from . import imagetest_kinds as kinds

    backend = ctx.plan.backend
    assert backend is not None, "imagetest plans one task for the image's backend"
    layout_dir = ctx.up("image")
    dist = ctx.up("package")
    digest = ctx.up_stamp("image")["report"].get("image_digest")
    labels = tuple(json.loads((dist / mf.MANIFEST).read_bytes()).get("signature", {})
                   .get("labels", ()))
    mounts: dict[str, str] = {}
    if kinds.takes_images(ctx.bundle):  # {"image": PATH}: the files bound into the container
        lines, host_lines, mounts = kinds.image_requests(ctx.bundle, _rows(ctx.bundle))
    else:
        lines = host_lines = rows_for(ctx, labels)
    expected, host_s = on_host(dist, host_lines)
    client = engine.client()
    tag = f"modelkiln-imagetest/{ctx.bundle.name}:{ctx.plan.get('version')}-{backend}"
    image_id = engine.load(client, layout_dir, IMAGE_TAG, tag)
    first = engine.run(client, image_id, ["predict"], (lines[0] + "\n").encode(),
                       mounts=mounts)
    if first.status != 0 or first.first_answer_s is None:
        raise BuildError(f"the image did not answer one row (exit {first.status}): "
                         f"{first.stderr.strip()[-300:]}")
    full = engine.run(client, image_id, ["predict"], ("\n".join(lines) + "\n").encode(),
                      mounts=mounts)
    if full.status != 0:
        raise BuildError(f"predict in the container exited {full.status}: "
                         f"{full.stderr.strip()[-300:]}")
    differ, worst = _compare(ctx.bundle, expected, _answers(full.stdout))
    report: Report = {
        "image_digest": digest, "image_id": image_id, "engine": engine_version(client),
        "rows": len(lines), "decisions_differ": differ, "max_abs_score_diff": worst,
        "atol": _atol(ctx.bundle), "startup_to_first_answer_s": round(first.first_answer_s, 3),
        "container_rows_per_s": round(len(lines) / full.total_s, 1),
        "host_rows_per_s": round(len(lines) / host_s, 1)}
    (ctx.out / REPORT).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    if differ or worst > _atol(ctx.bundle):
        raise BuildError(f"the image answers differently from the build: {differ} of "
                         f"{len(lines)} rows change {_what(ctx.bundle)}, numbers differ by up to "
                         f"{worst:.3g} "
                         f"(tolerance {_atol(ctx.bundle):g}); the image's libraries differ from "
                         "the build's: run `kiln image-lock` and rebuild")
    ctx.log(f"imagetest:{ctx.bundle.name}-{backend}: {len(lines)} rows identical, first answer "
            f"{report['startup_to_first_answer_s']} s after start, "
            f"{report['container_rows_per_s']} rows/s in the container "
            f"({report['host_rows_per_s']} on the host)")
    return report


def engine_version(client: Any) -> str:
    try:
        info = client.version()
        return f"{info.get('Components', [{}])[0].get('Name', 'engine')} {info.get('Version')}"
    except Exception:
        return "unknown"
