"""Two bundles side by side: thresholds, parity figures, files and sizes.

The same figures `kiln plan --markdown` puts before a reviewer (per-label thresholds, the int8
decision flip rate, the fp32 logit difference, top-label agreement, each file's size and digest,
the tarball), shown as HTML tables with every row, the differing ones marked, instead of markdown
rows of differences only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .bundle import BundleView

PARITY = (("int8", "decision_flip_rate"), ("int8", "top_label_agreement"),
          ("int8", "max_abs_score_diff"), ("fp32", "max_abs_logit_diff"))


@dataclass(frozen=True)
class Line:
    what: str
    a: str
    b: str

    @property
    def differs(self) -> bool:
        return self.a != self.b


def _dig(value: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _parity(manifest: dict[str, Any] | None) -> Any:
    """The parity report: the manifest's `parity`, or its `parity` stage's report when the
    manifest keeps one report per stage."""
    report = _dig(manifest, "parity")
    inner = _dig(report, "parity")
    return inner if isinstance(inner, dict) else report


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def thresholds(a: BundleView, b: BundleView) -> list[Line]:
    left = {m.label: m for m in a.metrics}
    right = {m.label: m for m in b.metrics}
    out = []
    for label in dict.fromkeys([*left, *right]):
        la, rb = left.get(label), right.get(label)
        out.append(Line(label,
                        f"{_text(la.threshold)} (F1 {_text(la.f1)})" if la else "-",
                        f"{_text(rb.threshold)} (F1 {_text(rb.f1)})" if rb else "-"))
    return out


def parity(a: BundleView, b: BundleView) -> list[Line]:
    pa, pb = _parity(a.manifest), _parity(b.manifest)
    out = [Line(".".join(keys), _text(_dig(pa, *keys)), _text(_dig(pb, *keys))) for keys in PARITY]
    out.append(Line("passed", _text(_dig(pa, "passed")), _text(_dig(pb, "passed"))))
    return [line for line in out if (line.a, line.b) != ("-", "-")]


def _files(manifest: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    rows = _dig(manifest, "files")
    if not isinstance(rows, list):
        return {}
    return {f["path"]: f for f in rows if isinstance(f, dict) and isinstance(f.get("path"), str)}


def _file(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "-"
    size = entry.get("size")
    digest = str(entry.get("sha256", "-"))[:12]
    return f"{size:,} B {digest}" if isinstance(size, int) else f"- {digest}"


def files(a: BundleView, b: BundleView) -> list[Line]:
    fa, fb = _files(a.manifest), _files(b.manifest)
    out = [Line(path, _file(fa.get(path)), _file(fb.get(path)))
           for path in sorted(set(fa) | set(fb))]
    aa, ab = _dig(a.manifest, "archive"), _dig(b.manifest, "archive")
    if isinstance(aa, dict) or isinstance(ab, dict):
        out.append(Line("bundle.tar.gz", _file(aa if isinstance(aa, dict) else None),
                        _file(ab if isinstance(ab, dict) else None)))
    return out
