"""The model card's computed parts: front matter, per-label metrics, parity table, threshold chart.

The package stage fills templates/model_card.md with these (stages/package.py, `model_card`).
Everything comes from what the build recorded (the thresholds stage's per-label metrics, the parity
gate's report) and from the spec's optional `card:` section; nothing is dated, so a rebuild from
the same inputs writes the same bytes.

The front matter is the YAML block Hugging Face reads (`license`, `pipeline_tag`, `library_name`,
`tags`). It is written by hand, not with a YAML library: the stages may not import yaml (only the
spec package does), and every value is either a JSON string (a valid YAML double-quoted scalar) or
a flow list of them. The chart is a small hand-written SVG (bars of threshold and F1 per label) so
the card needs no plotting dependency in the build environment.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any
from xml.sax.saxutils import escape

from ..artifacts import names
from ..backends import backends
from ..model.bundle import Bundle
from .base import RunContext

# source.task -> Hugging Face pipeline tag
PIPELINE_TAGS = {"multi-label-classification": "text-classification",
                 "single-label-classification": "text-classification",
                 "feature-extraction": "feature-extraction",
                 "token-classification": "token-classification",
                 "image-classification": "image-classification"}
DEFAULT_LICENSE = "unknown"  # Hugging Face's value for "not stated"; the spec's card.license sets it


def library(backend: str) -> str:
    """The library a Hugging Face reader loads the backend's model with (its LIBRARY)."""
    about = backends().get(backend)
    return about.LIBRARY if about is not None else backend


def model_file(backend: str) -> str:
    """The bundle file the card names as the backend's model (its MODEL_FILE)."""
    about = backends().get(backend)
    return about.MODEL_FILE if about is not None else names.WEIGHTS


def front_matter(bundle: Bundle, backend: str) -> str:
    """The card's YAML front matter (between `---` lines), Hugging Face style."""
    task = bundle.source.task
    tags = ["modelkiln", backend, task, *bundle.card.tags]
    lines = ["---",
             f"license: {json.dumps(bundle.card.license or DEFAULT_LICENSE)}",
             f"pipeline_tag: {json.dumps(PIPELINE_TAGS.get(task, 'text-classification'))}",
             f"library_name: {json.dumps(library(backend))}",
             f"tags: [{', '.join(json.dumps(t) for t in dict.fromkeys(tags))}]",
             f"model_name: {json.dumps(bundle.name)}",
             "---"]
    return "\n".join(lines) + "\n"


def cell(value: object) -> str:
    """Text for one Markdown table cell: a `|` or a line break would end the cell or the row."""
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _num(metric: Mapping[str, Any], key: str) -> str:
    value = metric.get(key)
    if isinstance(value, bool) or value is None:
        return "–"
    return str(value) if isinstance(value, int) else f"{float(value):.3f}"


def _how(metric: Mapping[str, Any]) -> str:
    """The "how chosen" cell: the source, and why when the default was kept."""
    why = metric.get("why")
    return f"{metric.get('source', '')}: {why}" if why else str(metric.get("source", ""))


def metrics_table(order: Sequence[str], cuts: Mapping[str, float],
                  metrics: Mapping[str, Mapping[str, Any]], fields: Mapping[str, Any]) -> str:
    """Per label: the chosen threshold, precision, recall, F1 and support on the calibration set
    at that threshold, how the threshold was chosen and the registry field it maps to."""
    rows = ["| label | threshold | precision | recall | F1 | support | how chosen | registry field |",
            "|---|---:|---:|---:|---:|---:|---|---|"]
    for lab in order:
        m = metrics.get(lab, {})
        rows.append(f"| {cell(lab)} | {cuts[lab]:.6g} | {_num(m, 'precision')} | "
                    f"{_num(m, 'recall')} | {_num(m, 'f1')} | {_num(m, 'support')} | "
                    f"{cell(_how(m))} | {cell(json.dumps(fields.get(lab), sort_keys=True))} |")
    return "\n".join(rows)


def parity_table(parity: Mapping[str, Any], order: Sequence[str]) -> str:
    """Per label: how the shipped int8 model's decisions compare with PyTorch on the calibration
    texts (the parity gate's per-label figures); empty when no parity gate ran."""
    per_label = parity.get("per_label") or {}
    if not per_label:
        return "No parity gate ran for this backend (the PyTorch weights are the model)."
    rows = [f"On {parity.get('rows', '?')} calibration texts, against PyTorch:", "",
            "| label | int8 decision flips | flip rate | rows near threshold | "
            "fp32 max abs logit diff | int8 max abs score diff |",
            "|---|---:|---:|---:|---:|---:|"]
    for lab in [x for x in order if x in per_label]:
        p = per_label[lab]
        rows.append(f"| {cell(lab)} | {p.get('flips', '–')} | {float(p.get('flip_rate', 0)):.2%} | "
                    f"{p.get('near_threshold', '–')} | {float(p.get('fp32_max_abs_diff', 0)):.3g} | "
                    f"{float(p.get('int8_max_abs_score_diff', 0)):.3g} |")
    return "\n".join(rows)


def prose(text: str, missing: str) -> str:
    return text.strip() if text.strip() else missing


# chart geometry (px)
_LABEL_W, _BAR_W, _ROW_H, _TOP, _PAD = 180, 300, 30, 34, 10
_COLOURS = {"threshold": "#4c72b0", "F1": "#dd8452"}


def thresholds_svg(order: Sequence[str], cuts: Mapping[str, float],
                   metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """A horizontal bar chart: per label, its threshold and its F1 at that threshold (0..1)."""
    width = _LABEL_W + _BAR_W + 60
    height = _TOP + _ROW_H * len(order) + _PAD
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           "<title>Per-label threshold and F1 on the calibration set</title>",
           f'<rect width="{width}" height="{height}" fill="#ffffff"/>']
    x = _LABEL_W
    for name, colour in _COLOURS.items():
        out.append(f'<rect x="{x}" y="8" width="12" height="12" fill="{colour}"/>'
                   f'<text x="{x + 16}" y="18">{name}</text>')
        x += 90
    axis_x = _LABEL_W
    out.append(f'<line x1="{axis_x}" y1="{_TOP - 4}" x2="{axis_x}" y2="{height - _PAD}" '
               'stroke="#333333"/>')
    for i, lab in enumerate(order):
        y = _TOP + i * _ROW_H
        out.append(f'<text x="{_LABEL_W - 6}" y="{y + 17}" text-anchor="end">'
                   f"{escape(str(lab))}</text>")
        f1 = metrics.get(lab, {}).get("f1")
        for j, (name, value) in enumerate((("threshold", cuts[lab]), ("F1", f1))):
            if value is None or isinstance(value, bool):
                continue
            v = min(max(float(value), 0.0), 1.0)
            out.append(f'<rect x="{axis_x}" y="{y + 3 + j * 12}" width="{v * _BAR_W:.1f}" '
                       f'height="11" fill="{_COLOURS[name]}"><title>{escape(str(lab))} {name} '
                       f"{v:.3f}</title></rect>"
                       f'<text x="{axis_x + v * _BAR_W + 4:.1f}" y="{y + 12 + j * 12}" '
                       f'font-size="10">{v:.2f}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def chart_svg(ctx: RunContext) -> str:
    """The card's chart from the labels and thresholds stages' outputs."""
    order = json.loads((ctx.up("labels") / names.LABEL_ORDER).read_bytes())
    cuts = json.loads((ctx.up("thresholds") / names.THRESHOLDS).read_bytes())
    metrics = json.loads((ctx.up("thresholds") / names.THRESHOLD_METRICS).read_bytes())
    return thresholds_svg(order, cuts, metrics)
