"""The per-label chart as inline SVG geometry: no JavaScript, no chart library, no CDN.

Each label gets a group of horizontal bars on a 0..1 axis (threshold, F1, precision, recall) and
its support as a number. The template draws the rectangles and text from these numbers; every
label goes into the SVG as escaped text (Jinja autoescaping), never into an attribute that could
hold markup. A chart library would mean a JavaScript asset or a plotting stack for four bars a
label; the geometry is a few lines.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .bundle import Metric

SERIES = (("threshold", "threshold"), ("f1", "F1"), ("precision", "precision"),
          ("recall", "recall"))
LABEL_W = 220  # room for the label text left of the bars
PLOT_W = 420
BAR_H = 9
GROUP_GAP = 14
TOP = 28


@dataclass(frozen=True)
class Bar:
    series: str
    y: int
    width: float
    value: float


@dataclass(frozen=True)
class Group:
    label: str
    y: int  # baseline of the label text
    bars: tuple[Bar, ...]
    support: int | None


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    label_w: int
    plot_w: int
    bar_h: int
    groups: tuple[Group, ...]
    ticks: tuple[tuple[float, float], ...]  # (x, value)
    series: tuple[tuple[str, str], ...] = SERIES


def chart(rows: Sequence[Metric]) -> Chart | None:
    """The chart for the rows, or None when no label has a figure to draw."""
    groups = []
    y = TOP
    for row in rows:
        bars = []
        for i, (key, _title) in enumerate(SERIES):
            value = getattr(row, key)
            if value is not None:
                clamped = min(max(float(value), 0.0), 1.0)
                bars.append(Bar(key, y + i * BAR_H, round(clamped * PLOT_W, 1), float(value)))
        if bars:
            groups.append(Group(row.label, y + BAR_H * 2, tuple(bars), row.support))
            y += BAR_H * len(SERIES) + GROUP_GAP
    if not groups:
        return None
    ticks = tuple((LABEL_W + t / 4 * PLOT_W, t / 4) for t in range(5))
    return Chart(LABEL_W + PLOT_W + 80, y + 8, LABEL_W, PLOT_W, BAR_H, tuple(groups), ticks)
