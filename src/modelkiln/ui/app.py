"""The Flask application behind `kiln ui`: the registry page, an entry's page, compare, actions.

Flask with Jinja2 autoescaping renders every page on the server; there is no JavaScript at all,
and the stylesheet is a package file served by Flask (no CDN, no build step). Entry names, labels,
descriptions and file names come from specs and files, so they only ever reach a page through
autoescaped template variables. Reads go through the same registry and store functions as
`kiln registry list` and `kiln store list`; each request reads the files afresh, so a publish or
a CLI `lock` in another terminal shows on the next page load.
"""
from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from flask import Flask, abort, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from ..errors import KilnError, UsageError
from ..registry import Artifacts, RegistryEntry, layers
from ..registry.curate import StaticFields
from . import bundle as bundles
from . import compare as cmp
from .actions import Actions
from .chart import chart
from .guard import Guard
from .rows import matches, rows, store_versions, version_path


def create_app(registry_dir: str | None = None, *, read_only: bool = False,
               token: str | None = None, loopback: bool = True) -> Flask:
    """The application; `kiln ui` serves it with werkzeug's threaded server."""
    app = Flask(__name__, static_folder="static", template_folder="templates")
    guard = Guard(loopback=loopback, read_only=read_only, token=token)
    guard.install(app)
    actions = Actions(registry_dir)
    app.extensions["kiln_ui"] = (guard, actions)

    @app.context_processor
    def common() -> dict[str, Any]:
        return {"csrf": guard.csrf, "read_only": read_only, "registry_dir": registry_dir}

    def entry_or_404(name: str) -> tuple[RegistryEntry, bool, bool]:
        both = layers(registry_dir)
        if name not in both.merged:
            abort(404, f"no registry entry named {name!r}")
        return both.merged[name], name in both.curated, name in both.discovered

    @app.get("/")
    def registry_page() -> str:
        role = request.args.get("role", "")
        capability = request.args.get("capability", "")
        all_rows = rows(registry_dir, dict(actions.verdicts))
        shown = [r for r in all_rows if matches(r, role, capability)]
        roles = sorted({x for r in all_rows for x in r.entry.roles})
        caps = sorted({x for r in all_rows for x in r.entry.capabilities})
        return render_template("registry.html", rows=shown, total=len(all_rows), roles=roles,
                               capabilities=caps, role=role, capability=capability,
                               log=actions.entries_log()[:10])

    @app.get("/entry/<name>")
    def entry_page(name: str) -> str:
        entry, curated, discovered = entry_or_404(name)
        view = bundles.view(entry)
        verdict = actions.verdicts.get(name) if name in actions.verdicts else None
        return render_template("entry.html", entry=entry, curated=curated, discovered=discovered,
                               view=view, chart=chart(view.metrics), store=store_versions(entry),
                               drift=verdict, log=actions.entries_log(name))

    @app.get("/compare")
    def compare_page() -> str:
        a_ref, b_ref = request.args.get("a", ""), request.args.get("b", "")
        both = layers(registry_dir).merged
        sides = [_side(both, ref) for ref in (a_ref, b_ref)] if a_ref and b_ref else []
        if any(s is None for s in sides):
            abort(404, "name an entry (NAME) or a store version of it (NAME@VERSION) on each side")
        context: dict[str, Any] = {"names": list(both), "a": a_ref, "b": b_ref}
        if sides:
            (ta, va), (tb, vb) = sides  # type: ignore[misc]
            context.update(ta=ta, tb=tb, thresholds=cmp.thresholds(va, vb),
                           parity=cmp.parity(va, vb), files=cmp.files(va, vb))
        return render_template("compare.html", **context)

    def back(name: str) -> Response:
        return redirect(url_for("entry_page", name=name), code=303)

    @app.post("/entry/<name>/verify")
    def do_verify(name: str) -> Response:
        entry_or_404(name)
        actions.verify(name)
        return back(name)

    @app.post("/entry/<name>/lock")
    def do_lock(name: str) -> Response:
        entry_or_404(name)
        actions.lock(name, set_expected=request.form.get("set_expected") == "1")
        return back(name)

    @app.post("/entry/<name>/unlock")
    def do_unlock(name: str) -> Response:
        entry_or_404(name)
        actions.unlock(name)
        return back(name)

    @app.post("/entry/<name>/import")
    def do_import(name: str) -> Response:
        entry_or_404(name)
        form = request.form
        actions.import_entry(name, lambda: StaticFields(
            backend=form.get("backend", "").strip() or None,
            description=form.get("description", "").strip() or None,
            roles=tuple(_words(form.get("roles", ""))),
            capabilities=tuple(_words(form.get("capabilities", ""))),
            served_model_id=form.get("served_model_id", "").strip() or None,
            metadata=_metadata(form.get("metadata", ""))))
        return back(name)

    @app.errorhandler(KilnError)
    def registry_error(exc: KilnError) -> tuple[str, int]:
        return render_template("error.html", message=str(exc)), 500

    return app


def _metadata(text: str) -> dict[str, Any]:
    """The import form's metadata field: empty, or one JSON object (UsageError otherwise)."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"metadata: not JSON ({exc}); write an object such as "
                         '{"owner": "ml-platform"}') from None
    if not isinstance(value, dict):
        raise UsageError('metadata: a JSON object is needed, such as {"owner": "ml-platform"}')
    return value


def _words(text: str) -> list[str]:
    return [w.strip() for w in text.replace("\n", ",").split(",") if w.strip()]


def _side(entries: dict[str, RegistryEntry], ref: str) -> tuple[str, bundles.BundleView] | None:
    """NAME (the entry's bundle) or NAME@VERSION (another store version of its agent)."""
    name, _, version = ref.partition("@")
    entry = entries.get(name)
    if entry is None:
        return None
    if version:
        path = version_path(entry, version)
        if path is None:
            return None
        entry = replace(entry, artifacts=Artifacts(store=str(path)))
        return f"{name} @ {version}", bundles.view(entry)
    return f"{name} ({entry.version or 'no version'})", bundles.view(entry)
