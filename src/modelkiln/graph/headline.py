"""The top of each bundle's section in the review comment: what changes for the people who consume
it, a warning when publish would refuse the version, and a chart GitHub draws in the comment.

- `headline`: a few lines, version, which backends get new bytes, thresholds moved, parity and
  size, from the two sides' manifests and thresholds (review.Side);
- `version_warning`: the change keeps a version that is already published with other bytes
  (found at the publish destination, or, when that cannot be read here, in the base's figures
  of the same version), so the merge would fail at publish with exit 5;
- `chart`: per-label thresholds and F1, base against this change, and the int8 decision flip
  rate, as Mermaid `xychart-beta` blocks (GitHub renders them; no image hosting), each followed
  by the same numbers in a table for screen readers.

Mermaid text is not Markdown: label names (which a pull request controls) are cut down to
letters, digits, spaces and `_.-` before they go inside a chart, and every table cell goes
through `mdsafe`.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Protocol

from .mdsafe import code, text

Json = dict[str, Any]
MAX_LABELS = 30  # past this many labels, the chart shows those whose threshold or F1 moved most
_MERMAID_UNSAFE = re.compile(r"[^A-Za-z0-9 _.\-]")


class SideLike(Protocol):
    where: str
    manifest: Json | None
    thresholds: Json | None
    metrics: Json | None


def archive_sha(manifest: Json | None) -> str | None:
    archive = (manifest or {}).get("archive")
    value = archive.get("sha256") if isinstance(archive, dict) else None
    return value if isinstance(value, str) else None


def _size(side: SideLike) -> int | None:
    archive = (side.manifest or {}).get("archive")
    value = archive.get("size") if isinstance(archive, dict) else None
    return value if isinstance(value, int) else None


def flip_rate(side: SideLike) -> float | None:
    value = _dig(side.manifest, "parity", "int8", "decision_flip_rate")
    return float(value) if isinstance(value, int | float) else None


def _dig(value: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(k)
    return value


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else None


def f1(side: SideLike, label: str) -> float | None:
    return _num(_dig(side.metrics, label, "f1"))


def headline(version: str, base_version: str | None, sides: Mapping[str, tuple[SideLike, SideLike]],
             rebuilt: list[str]) -> list[str]:
    """Bullet lines: version, new bytes per backend, thresholds moved, parity, size."""
    out = [f"- **Version** {text(version)}" + (
        "" if base_version in (None, version) else f" (base {text(base_version)})")]
    changed_bytes = [b for b, (old, new) in sides.items()
                     if archive_sha(new.manifest) is not None
                     and archive_sha(old.manifest) != archive_sha(new.manifest)]
    unknown = [b for b in rebuilt if archive_sha(sides[b][1].manifest) is None] if sides else rebuilt
    if changed_bytes or unknown:
        what = [f"{text(b)}" for b in changed_bytes]
        what += [f"{text(b)} (rebuilt; bytes known after `kiln build`)" for b in unknown]
        out.append("- **New bytes**: " + ", ".join(what))
    else:
        out.append("- **New bytes**: none")
    moved = _moved_thresholds(sides)
    if moved:
        shown = ", ".join(f"{code(k, table=False)} {text(a)} → {text(b)}" for k, a, b in moved[:5])
        more = f" and {len(moved) - 5} more" if len(moved) > 5 else ""
        out.append(f"- **Thresholds moved**: {len(moved)} label{'s' if len(moved) != 1 else ''}"
                   f" ({shown}{more})")
    for backend, (old, new) in sides.items():
        a, b = flip_rate(old), flip_rate(new)
        if a != b and (a is not None or b is not None):
            out.append(f"- **Parity** ({text(backend)}): int8 decision flip rate "
                       f"{_pct(a)} → {_pct(b)}")
        sa, sb = _size(old), _size(new)
        if sa is not None and sb is not None and sa != sb:
            out.append(f"- **Size** ({text(backend)}): {sa:,} B → {sb:,} B "
                       f"({(sb - sa) / sa:+.1%})" if sa else f"{sb:,} B")
    return out


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _moved_thresholds(sides: Mapping[str, tuple[SideLike, SideLike]]) -> list[tuple[str, Any, Any]]:
    """(label, base, change) of every threshold that moved (thresholds are per bundle: the first
    backend that knows both sides answers)."""
    for old, new in sides.values():
        if old.thresholds is not None and new.thresholds is not None:
            bt, nt = old.thresholds, new.thresholds
            return [(k, bt.get(k, "-"), nt.get(k, "-")) for k in dict.fromkeys([*nt, *bt])
                    if bt.get(k) != nt.get(k)]
    return []


def version_warning(name: str, version: str, backend: str, published: Json | None,
                    published_where: str, new: SideLike, rebuilt: bool) -> str | None:
    """The warning line when publishing this change would refuse the version (exit 5)."""
    if published is None:
        return None
    old_sha = archive_sha(published)
    new_sha = archive_sha(new.manifest)
    if old_sha is None or (new_sha is not None and new_sha == old_sha):
        return None
    if new_sha is None and not rebuilt:
        return None
    how = "already holds other bytes" if new_sha is not None else \
        "already holds this version, and this change rebuilds it"
    return (f"**{text(name)} {text(version)}** ({text(backend)}): {published_where} {how} "
            f"(archive sha256 {text(old_sha[:12])}): bump `version`: publish would refuse with "
            "exit 5")


def _mermaid_label(label: str) -> str:
    shown = _MERMAID_UNSAFE.sub("?", label)[:24] or "?"
    return f'"{shown}"'


def chart(name: str, old: SideLike, new: SideLike) -> list[str]:
    """Mermaid charts (thresholds and F1; int8 flip rate) and the numbers in a table."""
    bt, nt = old.thresholds or {}, new.thresholds or {}
    labels = list(dict.fromkeys([*nt, *bt]))  # the label order of thresholds.json
    if not labels:
        return []

    def moved(label: str) -> float:
        pairs = [(_num(bt.get(label)), _num(nt.get(label))), (f1(old, label), f1(new, label))]
        return max((abs(a - b) for a, b in pairs if a is not None and b is not None), default=0)

    if len(labels) > MAX_LABELS:
        kept = set(sorted(labels, key=moved, reverse=True)[:MAX_LABELS])
        labels = [x for x in labels if x in kept]
    series = [("threshold, base", [_num(bt.get(x)) for x in labels], "bar"),
              ("threshold, this change", [_num(nt.get(x)) for x in labels], "bar"),
              ("F1, base", [f1(old, x) for x in labels], "line"),
              ("F1, this change", [f1(new, x) for x in labels], "line")]
    series = [s for s in series if any(v is not None for v in s[1])]
    out = ["```mermaid", "xychart-beta",
           f'  title "{_MERMAID_UNSAFE.sub("?", name)[:60]}: thresholds (bars) and F1 (lines), '
           'base then this change"',
           f"  x-axis [{', '.join(_mermaid_label(x) for x in labels)}]",
           '  y-axis "value" 0 --> 1']
    out += [f"  {kind} [{', '.join(f'{v:.4f}' if v is not None else '0' for v in values)}]"
            for _, values, kind in series]
    out += ["```", "", "| label | " + " | ".join(s[0] for s in series) + " |",
            "|---|" + "---|" * len(series)]
    for i, label in enumerate(labels):
        out.append(f"| {code(label)} | " + " | ".join(
            f"{values[i]:.4f}" if values[i] is not None else "-" for _, values, _ in series) + " |")
    if any(v is None for _, values, _ in series for v in values):
        out += ["", "`-`: no figure on that side (an F1 is missing where a label kept the default "
                "threshold); the chart draws it at 0."]
    a, b = flip_rate(old), flip_rate(new)
    if a is not None or b is not None:
        out += ["", "```mermaid", "xychart-beta",
                '  title "int8 decision flip rate (%), base and this change"',
                '  x-axis ["base", "this change"]',
                f'  y-axis "%" 0 --> {max(1.0, 100 * max(a or 0, b or 0) * 1.25):.2f}',
                f"  bar [{100 * (a or 0):.3f}, {100 * (b or 0):.3f}]", "```", "",
                "| int8 decision flip rate | base | this change |", "|---|---|---|",
                f"| all rows | {_pct(a)} | {_pct(b)} |"]
    return out + [""]
