"""`kiln plugins`: the stages, backends and transports installed, and which package each comes from.

Every entry of the three entry-point groups is loaded (modelkiln.plugins) so the listing shows
what a build would use: a broken plug-in is listed with its one-line problem (and exits 1 so CI
notices), never a traceback, and the others are listed as usual.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from . import plugins

_KIND = {plugins.STAGES: "stage", plugins.BACKENDS: "backend", plugins.TRANSPORTS: "transport"}


def _builtin(group: str) -> dict[str, object]:
    """Each group's built-in table, imported only for this listing."""
    if group == plugins.STAGES:
        from .graph.plans import BUILTIN_STAGES
        return dict(BUILTIN_STAGES)
    if group == plugins.BACKENDS:
        from .backends import BUILTIN_BACKENDS
        return dict(BUILTIN_BACKENDS)
    from .transport.schemes import BUILTIN_TRANSPORTS
    return dict(BUILTIN_TRANSPORTS)


def _about(p: plugins.Plugin) -> str:
    doc = getattr(p.obj, "DOC", None)
    if isinstance(doc, str) and doc:
        return doc
    text = (getattr(p.obj, "__doc__", None) or "").strip()
    return text.splitlines()[0] if text else ""


def rows() -> list[dict[str, Any]]:
    """One row per installed entry of every group, in group order, first owner first."""
    out = []
    for group in plugins.GROUPS:
        for p in plugins.plugins(group, _builtin(group)):
            out.append({"kind": _KIND[group], "group": group, "name": p.name, "value": p.value,
                        "package": p.package, "version": p.version,
                        "ok": p.problem is None, "problem": p.problem,
                        "about": _about(p) if p.problem is None else ""})
    return out


def cmd_plugins(args: argparse.Namespace) -> int:
    found = rows()
    if args.kind:
        found = [r for r in found if r["kind"] == args.kind]
    if args.json:
        print(json.dumps(found, indent=2))
    else:
        width = max((len(r["name"]) for r in found), default=4)
        for r in found:
            origin = f"{r['package']} {r['version']}".strip()
            state = r["about"] if r["ok"] else f"BROKEN: {r['problem']}"
            print(f"{r['kind']:<9} {r['name']:<{width}}  {origin:<24} {state}")
    return 0 if all(r["ok"] for r in found) else 1


def add_parsers(sub: Any) -> None:
    """Register `kiln plugins` on cli.py's subparsers."""
    pg = sub.add_parser(
        "plugins", help="list the installed stages, backends and transports, and their packages",
        description="Lists every entry of the modelkiln.stages, modelkiln.backends and "
        "modelkiln.transports entry-point groups: modelkiln's own and third-party packages' "
        "alike, with the package that registered each. A plug-in that cannot be loaded is "
        "listed with its problem on one line (exit 1); the others load as usual.",
        epilog="examples:\n  kiln plugins\n  kiln plugins --kind transport\n"
        "  kiln plugins --json | jq '.[] | select(.ok | not)'")
    pg.add_argument("--kind", choices=sorted(_KIND.values()),
                    help="list only this kind (default: all three)")
    pg.add_argument("--json", action="store_true",
                    help="print a JSON list (kind, group, name, value, package, version, ok, "
                    "problem, about) instead of a table")
    pg.set_defaults(func=cmd_plugins)
