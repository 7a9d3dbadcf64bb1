"""`kiln store ...` and `kiln registry ...`: the operator commands for the store and the registry.

Part of the CLI layer (it prints); cli.py registers these parsers. Kept apart so each file stays
small. Store commands take --store-root (default $MODEL_STORE_ROOT, else ./model-store); registry commands take
--registry-dir (default $KILN_REGISTRY_DIR, else ./configs).
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from .errors import KilnError


def _store(args: argparse.Namespace) -> Any:
    """The store named by --store-root, else $MODEL_STORE_ROOT, else the embedded default that
    `kiln publish` uses when MODEL_STORE_ROOT is unset (<project>/model-store)."""
    from .paths import store_root
    from .store import ModelStore

    return ModelStore(store_root(args.store_root))


def _short(digest: str | None) -> str:
    return (digest or "-")[:12]


def store_list(args: argparse.Namespace) -> int:
    store = _store(args)
    if not args.agent:
        for name, alias in sorted(store.agents().items()):
            print(f"{name}" + (f" -> {alias} (legacy alias, read-only)" if alias else ""))
        return 0
    for v in store.list_versions(args.agent):
        flags = " ".join(f for f, on in (("*current", v.current), ("pinned", v.pinned)) if on)
        print(f"{v.version:24} seq={v.seq} files={v.files} size={v.size} "
              f"checksum={_short(v.checksum)} {flags}" + (f" PROBLEM: {v.problem}" if v.problem else ""))
    return 0


def store_current(args: argparse.Namespace) -> int:
    path = _store(args).get_current(args.agent)
    if path is None:
        raise KilnError(f"{args.agent}: no current version; publish one (`kiln publish SPEC`)")
    print(path)
    return 0


def store_rollback(args: argparse.Namespace) -> int:
    info = _store(args).rollback(args.agent, args.version)
    print(f"{args.agent} -> {info.version}")
    return 0


def store_prune(args: argparse.Namespace) -> int:
    removed = _store(args).prune(args.agent, args.keep)
    print("\n".join(f"removed {v}" for v in removed) or "nothing to remove")
    return 0


def store_verify(args: argparse.Namespace) -> int:
    info = _store(args).verify(args.agent, args.version)
    print(f"ok {args.agent} {info.version} checksum={info.checksum} files={info.files} size={info.size}")
    return 0


def registry_list(args: argparse.Namespace) -> int:
    from .registry import list_entries

    entries = list_entries(args.role, args.include_non_installed, registry_dir=args.registry_dir)
    if args.json:
        print(json.dumps([e.to_dict() | {"installed": e.installed} for e in entries], indent=2))
        return 0
    for e in entries:
        lock = "locked" if e.version_lock.locked else "unlocked"
        print(f"{e.name:28} {e.backend or '-':8} {e.version or '-':16} {lock:8} "
              f"{_short(e.aggregate_sha256)} roles={','.join(e.roles) or '-'}")
    return 0


def registry_select(args: argparse.Namespace) -> int:
    from .registry import select

    s = select(args.name, args.require or (), registry_dir=args.registry_dir)
    for key in ("name", "backend", "version", "served_model_id", "store", "bundle", "local", "s3"):
        print(f"{key}={getattr(s, key) or ''}")
    print(f"capabilities={','.join(s.capabilities)}")
    return 0


def registry_verify(args: argparse.Namespace) -> int:
    from .registry import verify

    r = verify(args.name, registry_dir=args.registry_dir)
    note = " (hash recorded: first verify)" if r.recorded else ""
    print(f"ok {r.name} aggregate={r.aggregate_sha256} files={r.files} "
          f"last_verified={r.last_verified}{note}")
    return 0


def registry_lock(args: argparse.Namespace) -> int:
    from .registry import lock

    entry = lock(args.name, args.set_expected, registry_dir=args.registry_dir)
    print(f"locked {entry.name} expected_hash={entry.version_lock.expected_hash}")
    return 0


def registry_unlock(args: argparse.Namespace) -> int:
    from .registry import unlock

    entry = unlock(args.name, registry_dir=args.registry_dir)
    print(f"unlocked {entry.name}")
    return 0


def add_parsers(sub: Any) -> None:
    """Register `store` and `registry` with their subcommands on the main parser."""
    st = sub.add_parser("store", help="the atomic on-disk model store (MODEL_STORE_ROOT)")
    st.add_argument("--store-root", help="store root (default: $MODEL_STORE_ROOT, else ./model-store)")
    ss = st.add_subparsers(dest="store_command", required=True, parser_class=type(st))
    p = ss.add_parser("list", help="agents, or one agent's versions")
    p.add_argument("agent", nargs="?")
    p.set_defaults(func=store_list)
    for name, func, help_ in (("current", store_current, "path of the current version"),
                              ("rollback", store_rollback, "point current at an earlier version"),
                              ("verify", store_verify, "re-hash a version (exit 2 on drift)")):
        p = ss.add_parser(name, help=help_)
        p.add_argument("agent")
        if name != "current":
            p.add_argument("version", nargs="?", help="default: the current (verify) or previous (rollback)")
        p.set_defaults(func=func)
    p = ss.add_parser("prune", help="keep the newest N versions (never current or locked ones)")
    p.add_argument("agent")
    p.add_argument("--keep", type=int, default=3)
    p.set_defaults(func=store_prune)

    rg = sub.add_parser("registry", help="the layered registry: list, select, verify, lock")
    rg.add_argument("--registry-dir", help="default: $KILN_REGISTRY_DIR, else ./configs")
    rs = rg.add_subparsers(dest="registry_command", required=True, parser_class=type(rg))
    p = rs.add_parser("list", help="entries, by default only those installed here")
    p.add_argument("--role")
    p.add_argument("--include-non-installed", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=registry_list)
    p = rs.add_parser("select", help="resolved paths and served model id (exit 4 if a capability is missing)")
    p.add_argument("name")
    p.add_argument("--require", action="append", metavar="CAPABILITY")
    p.set_defaults(func=registry_select)
    for name, func, help_ in (("verify", registry_verify, "re-hash; exit 2 naming every changed file"),
                              ("unlock", registry_unlock, "clear the version lock")):
        p = rs.add_parser(name, help=help_)
        p.add_argument("name")
        p.set_defaults(func=func)
    p = rs.add_parser("lock", help="lock the entry's hash")
    p.add_argument("name")
    p.add_argument("--set-expected", action="store_true", help="accept the current bytes' hash")
    p.set_defaults(func=registry_lock)
