"""`kiln ui`: serve the registry pages (src/modelkiln/ui) with werkzeug's threaded server.

Part of the CLI layer; cli.py registers the parser. Flask comes with the `ui` extra and is
imported only here, when the command runs: every other command starts without it.
"""
from __future__ import annotations

import argparse
import os
from typing import Any

from .errors import KilnError, UsageError

TOKEN_ENV = "KILN_UI_TOKEN"


def cmd_ui(args: argparse.Namespace) -> int:
    from .paths import registry_dir

    given = getattr(args, "registry_dir", None)
    where = registry_dir(given)
    if given and not where.is_dir():
        raise UsageError(f"--registry-dir {where}: no such directory; name the registry "
                         "directory (the one holding model_registry.curated.json)")
    token = args.token or os.environ.get(TOKEN_ENV) or None
    try:
        from .ui.guard import is_loopback
    except ImportError as exc:
        raise KilnError(f"kiln ui needs Flask ({exc.name} is not installed): "
                        "pip install 'modelkiln[ui]'") from None
    loopback = is_loopback(args.host)
    if not loopback and not token:
        raise UsageError(f"--host {args.host} is not a loopback address: anyone who can reach it "
                         f"could act on the registry; set an access token ({TOKEN_ENV}=... or "
                         "--token) or bind 127.0.0.1")
    from werkzeug.serving import make_server

    from .ui.app import create_app

    app = create_app(str(given) if given else None, read_only=args.read_only, token=token,
                     loopback=loopback)
    try:
        server = make_server(args.host, args.port, app, threaded=True)
    except OSError as exc:
        raise UsageError(f"{args.host}:{args.port}: cannot listen ({exc.strerror}); pick another "
                         "--port (0 picks a free one)") from None
    host = f"[{args.host}]" if ":" in args.host else args.host
    mode = " (read-only)" if args.read_only else ""
    hint = " (open it once with ?token=YOUR_TOKEN)" if token else ""
    print(f"kiln ui: serving {where} on http://{host}:{server.server_port}/{mode}{hint}",
          flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def add_parsers(sub: Any) -> None:
    """Register `kiln ui` on the main parser."""
    p = sub.add_parser(
        "ui", help="the registry in a browser: browse, compare, verify, lock, import",
        description="Serve a small web application over the registry, the model store and "
        "dist/ that the CLI reads: every entry of the curated and discovered layers, each "
        "entry's versions, files, thresholds chart, parity and provenance, a compare page, and "
        "the Verify / Lock / Unlock / Import actions (the same code as `kiln registry`). "
        "Loopback only unless an access token is set.",
        epilog="examples:\n  kiln ui\n  kiln ui --port 8800 --read-only\n"
        "  KILN_UI_TOKEN=$(openssl rand -hex 16) kiln ui --host 0.0.0.0",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: 127.0.0.1; any other needs a token)")
    p.add_argument("--port", type=int, default=8765,
                   help="port to listen on (default: 8765; 0 picks a free one and prints it)")
    p.add_argument("--read-only", action="store_true",
                   help="show no actions and refuse every POST (default: actions shown)")
    p.add_argument("--token", help=f"access token every request must carry (default: "
                   f"${TOKEN_ENV}); required to bind a non-loopback address")
    p.add_argument("--registry-dir", help="registry directory (default: $KILN_REGISTRY_DIR, "
                   "else ./configs)")
    p.set_defaults(func=cmd_ui)
