"""`kiln plan --markdown`: what a spec change will do, written for a pull-request comment.

Per bundle: the spec keys changed against the base ref, each task's fate (up to date, cache hit,
run) and why, where the base branch's manifests were found, and the figures a reviewer weighs:
per-label thresholds, parity figures, file sizes and digests, base against this change.

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
from ..model.bundle import Bundle
from . import basegit
from .mdsafe import code, text
from .planner import HIT, OK, TaskPlan
from .remote import index_key

Json = dict[str, Any]
ICON = {OK: "up to date", HIT: "cache hit", "run": "**run**"}


class Side:
    """One side of a comparison: where it came from, its manifest and thresholds (if known)."""

    def __init__(self, where: str, manifest: Json | None = None, thresholds: Json | None = None):
        self.where, self.manifest, self.thresholds = where, manifest, thresholds
        if not (_manifest_ok(manifest) and _thresholds_ok(thresholds)):
            self.where = f"{where} (ignored: its manifest or thresholds are malformed)"
            self.manifest = self.thresholds = None


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
    if thr is not None and thr.action == OK:
        thresholds = _json(_read(layout.stage_dir(bundle.name, "thresholds") / names.THRESHOLDS))
    elif thr is not None:
        thresholds = _blob_json(cache, records.get(thr.task), names.THRESHOLDS)
    if pkg is not None and pkg.action == OK:
        dist = layout.dist_dir(bundle.name, resolve(bundle.version, bundle.root), backend)
        return Side(code(dist.relative_to(bundle.root), table=False),
                    _json(_read(dist / names.MANIFEST)), thresholds)
    if pkg is not None and pkg.action == HIT:
        return Side("the action cache", _blob_json(cache, records.get(pkg.task), names.MANIFEST),
                    thresholds)
    return Side("not built yet (figures appear once `kiln build` has run)", None, thresholds)


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
            found = Side(where, summary["manifest"], _dict_or_none(summary.get("thresholds")))
            if found.manifest is not None:
                return found
            skipped = found.where
    if base_version is not None:
        from ..publish import render_destination
        from ..publish.release import destination_template
        from ..transport import read_small

        try:
            uri = render_destination(destination_template(bundle), name=bundle.name,
                                     version=base_version, backend=backend) + names.MANIFEST
            manifest = _json(read_small(uri, limit=16 << 20))
        except KilnError:
            manifest = None
        if manifest is not None:
            return Side(f"published {code(uri, table=False)}", manifest)
    return Side("no base found" + (f"; {skipped}" if skipped else ""))


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
    for gate, figure in (("parity", ("int8", "decision_flip_rate")),
                         ("parity", ("fp32", "max_abs_logit_diff")),
                         ("parity", ("int8", "top_label_agreement"))):
        old, new = (_dig(m, "parity", gate, *figure) for m in (bm, nm))
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
           cache: ActionCache | None, cache_note: str, base: str | None) -> str:
    by_bundle: dict[str, list[TaskPlan]] = {}
    for t in tasks:
        by_bundle.setdefault(t.bundle, []).append(t)
    counts = {a: sum(t.action == a for t in tasks) for a in (OK, HIT, "run")}
    out = ["## modelkiln plan", "",
           f"{len(bundles)} bundle{'' if len(bundles) == 1 else 's'}: {counts['run']} tasks run, {counts[HIT]} cache hits, "
           f"{counts[OK]} up to date. {text(cache_note)}"
           + (f"; base {code(base, table=False)}" if base else ""), ""]
    for bundle in bundles:
        own = by_bundle.get(bundle.name, [])
        out += _bundle_section(bundle, own, records, cache, base)
    return "\n".join(out).rstrip() + "\n"


def _bundle_section(bundle: Bundle, own: list[TaskPlan], records: dict[str, ActionRecord],
                    cache: ActionCache | None, base: str | None) -> list[str]:
    changes, base_version = basegit.spec_changes(bundle, base) if base else (None, None)
    busy = any(t.action != OK for t in own)
    out = [f"### {text(bundle.name)} {text(bundle.version)}" + ("" if busy else " (nothing to do)"),
           ""]
    if changes is not None:
        out += ["Spec changes since base: " + ("; ".join(changes) if changes else "none"), ""]
    out += source_lines(bundle, base)  # remote sources moved to a new lock
    out += ["| task | action | why |", "|---|---|---|"]
    for t in own:
        why = "; ".join(text(r) for r in t.reasons[:3]) or "-"
        out.append(f"| {code(t.task)} | {ICON.get(t.action) or text(t.action)} | {why} |")
    out.append("")
    tasks = {t.task: t for t in own}
    for backend in bundle.backends:
        if f"package:{bundle.name}-{backend}" not in tasks:
            continue
        old = base_side(bundle, backend, base, base_version, cache)
        new = this_side(bundle, backend, tasks, records, cache)
        out.append(f"**{text(backend)}**: base from {old.where}; this change from {new.where}.")
        rows = deltas(old, new) if old.manifest or old.thresholds else []
        if rows:
            out += ["", "| what | base | this change |", "|---|---|---|", *rows]
        elif old.manifest and new.manifest:
            out.append("No differences in thresholds, parity figures, files or digests.")
        out.append("")
    return out


def plan_markdown(bundles: Sequence[Bundle], skip: frozenset[str], config: CacheConfig | None,
                  base: str | None) -> str:
    """The whole comment: plan every task (records of hits kept), then render."""
    from ..cache import resolve
    from .execute import cache_for
    from .planner import plan_tasks

    if not bundles:
        return "## modelkiln plan\n\nNo bundles.\n"
    root = bundles[0].root
    config = config if config is not None else resolve(root)
    records: dict[str, ActionRecord] = {}
    tasks = plan_tasks(bundles, skip, config, records)
    return render(bundles, tasks, records, cache_for(config, root), config.describe().capitalize(),
                  base)
