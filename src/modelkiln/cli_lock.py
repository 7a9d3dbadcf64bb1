"""`kiln lock [NAME ...]`: pin each spec's remote sources in bundles/<name>.lock.

Part of the CLI layer (it prints); cli.py registers the parser. A NAME is a bundle name
(bundles/NAME.yaml) or a spec file; none means every spec under bundles/. The spec is parsed and
schema-checked, not converted: converting needs the lock this command writes.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .errors import UsageError

EPILOG = """examples:
  kiln lock registry-v3          resolve registry-v3's s3:// / oci:// / hf:// sources, write
                                 bundles/registry-v3.lock (commit it with the spec)
  kiln lock --json               every spec under bundles/, one JSON report
"""


def add_parsers(sub: Any) -> None:
    """Register `kiln lock` on cli.py's subparsers."""
    lk = sub.add_parser(
        "lock", help="pin remote sources (s3://, oci://, hf://) in bundles/<name>.lock",
        description="Resolve every remote source a spec names (source.checkpoint, "
        "source.tokenizer, thresholds.calibration) to an immutable reference and record every "
        "file's path, size and sha256 in bundles/<name>.lock. validate, plan, changed and a no-op "
        "build read only the lock; a build fetches the locked files and refuses any that differ "
        "(exit 2). Re-locking reads metadata only for objects whose ETag/version is unchanged.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    lk.add_argument("names", nargs="*", metavar="NAME",
                    help="bundle names or spec files (default: every bundles/*.yaml)")
    lk.add_argument("--json", action="store_true", help="print a JSON report (default: text)")
    lk.set_defaults(func=cmd_lock)


def _specs(names: list[str]) -> list[Path]:
    bundles = Path.cwd() / "bundles"
    if not names:
        found = sorted(p for p in bundles.glob("*.y*ml") if p.suffix in (".yaml", ".yml"))
        if not found:
            raise UsageError(f"no specs under {bundles}; name a spec file")
        return found
    out = []
    for n in names:
        p = Path(n)
        cand = [p] if p.suffix in (".yaml", ".yml") else [bundles / f"{n}.yaml", bundles / f"{n}.yml"]
        hit = next((c for c in cand if c.is_file()), None)
        if hit is None:
            raise UsageError(f"{n}: no such bundle or spec file; name bundles/NAME.yaml or NAME")
        out.append(hit)
    return out


def cmd_lock(args: argparse.Namespace) -> int:
    from .sources.locking import lock_spec
    from .spec import load_documents

    specs = _specs(args.names)
    docs = load_documents(specs)
    log = None if args.json else (lambda m: print(m, file=sys.stderr, flush=True))
    report = []
    for doc in docs:
        done = lock_spec(doc.path, doc.data, log)
        report.append({"spec": str(doc.path), "lock": str(done.path), "changed": done.changed,
                       "sources": [{"uri": e.uri, "resolved": e.resolved, "files": len(e.files),
                                    "bytes": e.size} for e in done.entries]})
        if not args.json:
            what = "written" if done.changed else "unchanged"
            print(f"{done.path}: {what} ({len(done.entries)} remote source(s))")
            for e in done.entries:
                print(f"  {e.uri} -> {e.resolved[:19]}  {len(e.files)} files, {e.size:,} bytes")
    if args.json:
        print(json.dumps(report, indent=2))
    return 0
