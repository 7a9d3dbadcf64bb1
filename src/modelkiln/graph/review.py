"""`kiln plan --markdown`: what a spec change will do, written for a pull-request comment.

At the top: every spec that does not validate (its problems; the others are planned in full),
then a warning for each bundle whose version publish would refuse (graph.headline). Per bundle,
headline first: version, which backends get new bytes, thresholds moved, parity and size, and the
spec keys changed against the base ref; a chart of per-label thresholds and F1 with its numbers;
then, folded in <details>, each task's fate (run and cache-hit rows one by one, up-to-date rows in
one) and the figure tables: per-label thresholds, parity figures, file sizes and digests.

This side's figures come from what is already here or in the cache: dist/ and build/ when the
package is up to date, else the small manifest and thresholds blobs of cache hits (checked
against their sha256). The base's come from the cache index a trusted build wrote for the base
commit (or one of its recent ancestors), else from the published manifest of the base version.

Everything that comes from a spec, a label file or the cache is escaped (`mdsafe`), and a cached
manifest or thresholds record of the wrong shape is ignored, with a note in the comment saying so.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..artifacts import names
from ..artifacts.statefile import read_regular
from ..cache import ActionCache, ActionRecord, CacheConfig
from ..errors import KilnError
from ..model import BrokenSpec
from ..model.bundle import Bundle
from . import basegit
from .headline import chart, headline, version_warning
from .mdsafe import code, text
from .planner import HIT, OK, TaskPlan
from .remote import index_key

Json = dict[str, Any]
ICON = {OK: "up to date", HIT: "cache hit", "run": "**run**"}


NO_BASE = "no base found"


class Side:
    """One side of a comparison: where it came from, its manifest, thresholds and per-label
    threshold metrics (threshold_metrics.json: label -> {f1, precision, ...}), where known."""

    def __init__(self, where: str, manifest: Json | None = None, thresholds: Json | None = None,
                 metrics: Json | None = None):
        self.where, self.manifest, self.thresholds = where, manifest, thresholds
        self.metrics = metrics if _thresholds_ok(metrics) else None
        if not (_manifest_ok(manifest) and _thresholds_ok(thresholds)):
            self.where = f"{where} (ignored: its manifest or thresholds are malformed)"
            self.manifest = self.thresholds = self.metrics = None


def _manifest_ok(manifest: Json | None) -> bool:
    """The shape `deltas` reads: a files list of objects with string paths, an archive object."""
    if manifest is None:
        return True
    files = manifest.get("files", [])
    return (isinstance(files, list)
            and all(isinstance(f, dict) and isinstance(f.get("path"), str) for f in files)
            and isinstance(manifest.get("archive", {}), dict))


def _thresholds_ok(thresholds: Json | None) -> bool:
    return thresholds is None or all(isinstance(k, str) for k in thresholds)


def _json(data: bytes | None) -> Json | None:
    try:
        value = json.loads(data) if data is not None else None
    except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than Python goes
        return None
    return value if isinstance(value, dict) else None


def _blob_json(cache: ActionCache | None, record: ActionRecord | None, path: str) -> Json | None:
    if cache is None or record is None:
        return None
    blob = next((b for b in record.outputs if b.path == path), None)
    return _json(cache.read_blob(blob)) if blob else None


def this_side(bundle: Bundle, backend: str, tasks: dict[str, TaskPlan],
              records: dict[str, ActionRecord], cache: ActionCache | None) -> Side:
    from ..model.version import resolve
    from ..paths import Layout

    layout = Layout(bundle.root)
    pkg, thr = tasks.get(f"package:{bundle.name}-{backend}"), tasks.get(f"thresholds:{bundle.name}")
    thresholds: Json | None = None
    metrics: Json | None = None
    if thr is not None and thr.action == OK:
        where = layout.stage_dir(bundle.name, "thresholds")
        thresholds = _json(_read(where / names.THRESHOLDS))
        metrics = _json(_read(where / names.THRESHOLD_METRICS))
    elif thr is not None:
        thresholds = _blob_json(cache, records.get(thr.task), names.THRESHOLDS)
        metrics = _blob_json(cache, records.get(thr.task), names.THRESHOLD_METRICS)
    if pkg is not None and pkg.action == OK:
        dist = layout.dist_dir(bundle.name, resolve(bundle.version, bundle.root), backend)
        return Side(code(dist.relative_to(bundle.root), table=False),
                    _json(_read(dist / names.MANIFEST)), thresholds, metrics)
    if pkg is not None and pkg.action == HIT:
        return Side("the action cache", _blob_json(cache, records.get(pkg.task), names.MANIFEST),
                    thresholds, metrics)
    return Side("not built yet (figures appear once `kiln build` has run)", None, thresholds,
                metrics)


def _read(path: Any) -> bytes | None:
    return read_regular(path, 16 << 20)  # never a FIFO or a device: a comment must not hang


def _dict_or_none(value: object) -> Json | None:
    return value if isinstance(value, dict) and value else None


def base_side(bundle: Bundle, backend: str, base: str | None, base_version: str | None,
              cache: ActionCache | None) -> Side:
    skipped = ""
    if base is not None and cache is not None:
        for commit in basegit.ancestors(bundle.root, base):
            raw = cache.read_small(index_key(bundle.name, commit, backend))
            if raw is None:
                continue
            where = f"cache index of {text(commit[:10])} ({text(cache.uri)})"
            summary = _json(raw)
            if summary is None or not isinstance(summary.get("manifest"), dict):
                skipped = f"{where} (ignored: not a review summary)"
                continue
            found = Side(where, summary["manifest"], _dict_or_none(summary.get("thresholds")),
                         _dict_or_none(summary.get("metrics")))
            if found.manifest is not None:
                return found
            skipped = found.where
    if base_version is not None:
        where, manifest = published(bundle, base_version, backend)
        if manifest is not None:
            return Side(where, manifest)
    return Side(NO_BASE + (f"; {skipped}" if skipped else ""))


def published(bundle: Bundle, version: str, backend: str) -> tuple[str, Json | None]:
    """("published `URI`", its manifest) at the bundle's publish destination for `version`;
    the manifest is None when there is none or it cannot be read here (no credentials)."""
    from ..publish import render_destination
    from ..publish.release import destination_template
    from ..transport import read_small

    uri = "?"
    try:
        uri = render_destination(destination_template(bundle), name=bundle.name,
                                 version=version, backend=backend) + names.MANIFEST
        manifest = _json(read_small(uri, limit=16 << 20))
    except KilnError:
        manifest = None
    return f"published {code(uri, table=False)}", manifest


def _fmt_size(n: object) -> str:
    return f"{n:,} B" if isinstance(n, int) else "-"


def deltas(base: Side, now: Side) -> list[str]:
    """Markdown table rows (| what | base | this change |) for the figures that differ."""
    rows: list[tuple[str, str, str]] = []
    bt, nt = base.thresholds or {}, now.thresholds or {}
    for label in sorted(set(bt) | set(nt)):
        if bt.get(label) != nt.get(label):
            rows.append((f"threshold {code(label)}", text(bt.get(label, "-")),
                         text(nt.get(label, "-"))))
    bm, nm = base.manifest or {}, now.manifest or {}
    # the manifest's `parity` holds the gate's figures flat (stages.package._checks)
    for figure in (("int8", "decision_flip_rate"), ("fp32", "max_abs_logit_diff"),
                   ("int8", "top_label_agreement")):
        old, new = (_dig(m, "parity", *figure) for m in (bm, nm))
        if old != new:
            rows.append((f"{'.'.join(figure)}", text(old if old is not None else "-"),
                         text(new if new is not None else "-")))
    bf = {f["path"]: f for f in bm.get("files", []) if isinstance(f, dict)}
    nf = {f["path"]: f for f in nm.get("files", []) if isinstance(f, dict)}
    for path in sorted(set(bf) | set(nf)):
        old_f, new_f = bf.get(path, {}), nf.get(path, {})
        if old_f.get("sha256") != new_f.get("sha256"):
            rows.append((code(path), f"{_fmt_size(old_f.get('size'))} {_short(old_f)}",
                         f"{_fmt_size(new_f.get('size'))} {_short(new_f)}"))
    ba, na = bm.get("archive", {}), nm.get("archive", {})
    if ba.get("sha256") != na.get("sha256") and (ba or na):
        rows.append(("`bundle.tar.gz`", f"{_fmt_size(ba.get('size'))} {_short(ba)}",
                     f"{_fmt_size(na.get('size'))} {_short(na)}"))
    return [f"| {a} | {b} | {c} |" for a, b, c in rows]


def _short(entry: Json) -> str:
    return text(str(entry.get("sha256", "-"))[:12])


def _dig(value: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(k)
    return value


def source_lines(bundle: Bundle, base: str | None) -> list[str]:
    """One line per remote source whose lock moved since `base` ("- checkpoint: s3://…/run-122 →
    run-123, 3 of 4 shards changed, +0.0 MB"), from the lock beside the spec at `base` and now."""
    if base is None:
        return []
    from ..sources.review import moves

    roles: dict[Any, str] = {}
    for place, role in ((bundle.source.checkpoint, "checkpoint"), (bundle.source.tokenizer,
                        "tokenizer"), (bundle.thresholds.calibration, "calibration")):
        if place is not None:
            roles.setdefault(place, role)
    return [f"- {text(m)}" for m in moves(bundle.spec_path, roles, base)]


def render(bundles: Sequence[Bundle], tasks: Sequence[TaskPlan], records: dict[str, ActionRecord],
           cache: ActionCache | None, cache_note: str, base: str | None,
           broken: Sequence[BrokenSpec] = ()) -> str:
    """The comment: specs that do not validate first, then warnings (a version publish would
    refuse), the counts, and one section per bundle (headline, chart, tasks folded)."""
    by_bundle: dict[str, list[TaskPlan]] = {}
    for t in tasks:
        by_bundle.setdefault(t.bundle, []).append(t)
    counts = {a: sum(t.action == a for t in tasks) for a in (OK, HIT, "run")}
    out = ["## modelkiln plan", ""]
    if broken:
        problems = [p for spec in broken for p in spec.problems]
        out += [f"> [!CAUTION]\n> **{len(broken)} spec{'s do' if len(broken) != 1 else ' does'} "
                "not validate**: not planned, and this check fails until fixed "
                "(`kiln validate`).", ">"]
        out += [f"> - {code(str(p), 400, table=False)}" for p in problems[:50]]
        if len(problems) > 50:
            out.append(f"> - and {len(problems) - 50} more")
        out.append("")
    sections = [_bundle_section(b, by_bundle.get(b.name, []), records, cache, base)
                for b in bundles]
    warnings = [w for _, ws in sections for w in ws]
    if warnings:
        out += ["> [!WARNING]", *(f"> {w}" + ("  " if i < len(warnings) - 1 else "")
                                  for i, w in enumerate(warnings)), ""]
    out += [f"{len(bundles)} bundle{'' if len(bundles) == 1 else 's'}: {counts['run']} tasks "
            f"run, {counts[HIT]} cache hits, {counts[OK]} up to date. {text(cache_note)}"
            + (f"; base {code(base, table=False)}" if base else ""), ""]
    for lines, _ in sections:
        out += lines
    return "\n".join(out).rstrip() + "\n"


def _bundle_section(bundle: Bundle, own: list[TaskPlan], records: dict[str, ActionRecord],
                    cache: ActionCache | None, base: str | None) -> tuple[list[str], list[str]]:
    """(the bundle's lines, its warnings for the top of the comment)."""
    from ..model.version import resolve

    changes, base_version = basegit.spec_changes(bundle, base) if base else (None, None)
    version = resolve(bundle.version, bundle.root)
    busy = any(t.action != OK for t in own)
    tasks = {t.task: t for t in own}
    sides: dict[str, tuple[Side, Side]] = {}
    for backend in bundle.backends:
        if f"package:{bundle.name}-{backend}" in tasks:
            sides[backend] = (base_side(bundle, backend, base, base_version, cache),
                              this_side(bundle, backend, tasks, records, cache))
    rebuilt = [b for b in sides if tasks[f"package:{bundle.name}-{b}"].action == "run"]
    warnings = []
    for backend, (old, new) in sides.items():
        where, pub = published(bundle, version, backend)
        if pub is None and base_version == version and old.manifest is not None:
            where, pub = f"the base ({old.where})", old.manifest  # main published these bytes
        warn = version_warning(bundle.name, version, backend, pub, where, new,
                               backend in rebuilt)
        if warn:
            warnings.append(warn)
    state = "" if busy else " (built; publish would refuse this version)" if warnings \
        else " (nothing to do)"
    out = [f"### {text(bundle.name)} {text(version)}{state}", ""]
    out += headline(version, base_version, sides, rebuilt)
    if changes is not None:
        out.append("- **Spec changes since base**: " + ("; ".join(changes) if changes else "none"))
    out += source_lines(bundle, base)  # remote sources moved to a new lock
    out.append("")
    shown = next(((o, n) for o, n in sides.values() if o.thresholds or n.thresholds), None)
    if shown is not None:
        out += chart(bundle.name, *shown)
    ok = [t for t in own if t.action == OK]
    summary = ", ".join(f"{n} {what}" for n, what in (
        (sum(t.action == "run" for t in own), "run"), (sum(t.action == HIT for t in own),
                                                       "cache hits"), (len(ok), "up to date"))
        if n)
    out += ["<details>", f"<summary>{len(own)} tasks: {summary or 'none'}</summary>", "",
            "| task | action | why |", "|---|---|---|"]
    for t in own:
        if t.action != OK:
            why = "; ".join(text(r) for r in t.reasons[:3]) or "-"
            out.append(f"| {code(t.task)} | {ICON.get(t.action) or text(t.action)} | {why} |")
    if ok:  # up-to-date rows collapse into one
        out.append(f"| {len(ok)} task{'s' if len(ok) != 1 else ''}: "
                   f"{', '.join(code(t.task) for t in ok)} | up to date | - |")
    out.append("")
    for backend, (old, new) in sides.items():
        where = old.where if old.where.startswith(NO_BASE) else f"base from {old.where}"
        out.append(f"**{text(backend)}**: {where}; this change from {new.where}.")
        rows = deltas(old, new) if old.manifest or old.thresholds else []
        if rows:
            out += ["", "| what | base | this change |", "|---|---|---|", *rows]
        elif old.manifest and new.manifest:
            out.append("No differences in thresholds, parity figures, files or digests.")
        out.append("")
    out += ["</details>", ""]
    return out, warnings


def plan_markdown(bundles: Sequence[Bundle], skip: frozenset[str], config: CacheConfig | None,
                  base: str | None, broken: Sequence[BrokenSpec] = ()) -> str:
    """The whole comment: plan every healthy bundle (records of hits kept), then render, the
    specs that do not validate at the top."""
    from ..cache import resolve
    from .handles import cache_for
    from .planner import plan_tasks

    if not bundles:
        return render([], [], {}, None, "", base, broken) if broken else \
            "## modelkiln plan\n\nNo bundles.\n"
    root = bundles[0].root
    config = config if config is not None else resolve(root)
    records: dict[str, ActionRecord] = {}
    tasks = plan_tasks(bundles, skip, config, records)
    return render(bundles, tasks, records, cache_for(config, root), config.describe().capitalize(),
                  base, broken)
