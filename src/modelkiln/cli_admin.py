"""`kiln store ...` and `kiln registry ...`: the operator commands for the store and the registry.

Part of the CLI layer (it prints); cli.py registers these parsers. Kept apart so each file stays
small. Store commands take --store-root (default $MODEL_STORE_ROOT, else ./model-store); registry
commands take --registry-dir (default $KILN_REGISTRY_DIR, else ./configs), before or after the
subcommand. A directory named on the command line must be one (usage error, 64); the defaults may
be absent (an empty store or registry), but never a file (exit 1).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import KilnError, StoreError, UsageError

STORE_ROOT_HELP = "store root (default: $MODEL_STORE_ROOT, else ./model-store)"
REGISTRY_DIR_HELP = "registry directory (default: $KILN_REGISTRY_DIR, else ./configs)"


def _directory(path: Path, option: str, given: bool, what: str) -> None:
    """A store or registry location that cannot be one: named by `option` on the command line
    and absent or not a directory (UsageError), or not a directory wherever it came from."""
    if given and not path.exists():
        raise UsageError(f"{option} {path}: no such directory; name the {what}")
    if path.exists() and not path.is_dir():
        source = f"{option} {path}" if given else f"{path} (the {what})"
        error = UsageError if given else StoreError
        raise error(f"{source}: not a directory; name the {what}, not a file in it")


def _store(args: argparse.Namespace) -> Any:
    """The store named by --store-root, else $MODEL_STORE_ROOT, else the embedded default that
    `kiln publish` uses when MODEL_STORE_ROOT is unset (<project>/model-store)."""
    from .paths import store_root
    from .store import ModelStore

    root = store_root(args.store_root)
    _directory(root, "--store-root", bool(args.store_root),
               "store root (the directory holding <agent>/versions/)")
    return ModelStore(root)


def _registry(args: argparse.Namespace) -> str | None:
    """--registry-dir as given, once it names a directory (None: the default, checked the same
    way when it exists)."""
    from .paths import registry_dir

    given = getattr(args, "registry_dir", None)
    _directory(registry_dir(given), "--registry-dir", bool(given),
               "registry directory (the one holding model_registry.curated.json)")
    return str(given) if given else None


def _no_agent(store: Any, agent: str) -> None:
    """StoreError when `agent` is not in the store at all (not just without a current version)."""
    agents = store.agents()
    if agent in agents:
        return
    near = difflib.get_close_matches(agent, list(agents), n=1)
    hint = f"did you mean {near[0]!r}? " if near else ""
    raise StoreError(f"{agent}: no such agent in model store {store.root} ({hint}"
                     f"`kiln store list` lists them)")


def _short(digest: str | None) -> str:
    return (digest or "-")[:12]


def _json(value: Any) -> None:
    """A result as JSON on stdout: dataclasses as objects, paths as strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    elif isinstance(value, list):
        value = [dataclasses.asdict(v) if dataclasses.is_dataclass(v) and not isinstance(v, type)
                 else v for v in value]
    print(json.dumps(value, indent=2, default=str))


def store_list(args: argparse.Namespace) -> int:
    store = _store(args)
    if not args.agent and args.json:
        _json(sorted(store.agents()))
        return 0
    if not args.agent:
        for name, alias in sorted(store.agents().items()):
            print(f"{name}" + (f" -> {alias} (legacy alias, read-only)" if alias else ""))
        return 0
    versions = store.list_versions(args.agent)
    if not versions:
        _no_agent(store, args.agent)
    if args.json:
        _json(versions)
        return 0
    for v in versions:
        flags = " ".join(f for f, on in (("*current", v.current), ("pinned", v.pinned)) if on)
        print(f"{v.version:24} seq={v.seq} files={v.files} size={v.size} "
              f"checksum={_short(v.checksum)} {flags}" + (f" PROBLEM: {v.problem}" if v.problem else ""))
    return 0


def store_current(args: argparse.Namespace) -> int:
    store = _store(args)
    path = store.get_current(args.agent)
    if path is None:
        _no_agent(store, args.agent)
        raise KilnError(f"{args.agent}: no current version; publish one (`kiln publish SPEC`) "
                        f"or point current at one (`kiln store rollback {args.agent} VERSION`)")
    if args.json:
        _json({"agent": args.agent, "path": str(path)})
    else:
        print(path)
    return 0


def store_rollback(args: argparse.Namespace) -> int:
    info = _store(args).rollback(args.agent, args.version)
    print(f"{args.agent} -> {info.version}")
    return 0


def store_prune(args: argparse.Namespace) -> int:
    from .registry import store_versions_in_use

    store, registry = _store(args), _registry(args)

    def in_use() -> set[str]:  # asked under the agent lock: a publish cannot slip in between
        return store_versions_in_use(store.root, args.agent, registry_dir=registry)

    removed = store.prune(args.agent, args.keep, protect=in_use)
    print("\n".join(f"removed {v}" for v in removed) or "nothing to remove")
    return 0


def store_repair(args: argparse.Namespace) -> int:
    info, source, skipped = _repair(_store(args), args.agent, args.version, args.source,
                                    _registry(args))
    for line in skipped:  # the sources tried before the one that worked, and why each failed
        print(f"kiln: store repair: skipped {line}", file=sys.stderr)
    if source is None:
        print(f"ok {args.agent} {info.version}: verified, nothing to repair")
    else:
        print(f"repaired {args.agent} {info.version} from {source} (checksum={info.checksum})")
    return 0


def store_verify(args: argparse.Namespace) -> int:
    info = _store(args).verify(args.agent, args.version)
    if args.json:
        _json(info)
        return 0
    print(f"ok {args.agent} {info.version} checksum={info.checksum} files={info.files} size={info.size}")
    return 0


def _repair(store: Any, agent: str, version: str | None, source: str | None,
            registry: str | None) -> tuple[Any, str | None, list[str]]:
    """Verify the version; if it drifted, restore it from the first candidate tarball whose sha256
    is the one its sealed manifest recorded. (info, where it came from, the candidates tried
    before it and why each was not used); where is None when intact.

    Every documented source is tried in turn: a registry that cannot be read, an S3 copy without
    credentials or a dist/ file that cannot be opened is noted and the next one tried; only when
    none holds the tarball is it a StoreError, naming each with its reason."""
    from .errors import DriftError
    from .store import read_manifest

    version = version or store.current_version(agent)
    if version is None:
        raise StoreError(f"{agent}: no current version; name the version to repair")
    try:
        return store.verify(agent, version), None, []
    except DriftError:
        pass
    vdir = store.root / agent / "versions" / version
    record = read_manifest(vdir).bundle
    if record is None:
        raise StoreError(f"{vdir}: not published from a bundle tarball, so nothing can restore "
                         "it; re-publish it under a new version")
    tried: list[str] = []
    sources = [source] if source else _candidates(store, agent, version, record, registry, tried)
    for where in sources:
        with contextlib.ExitStack() as held:
            try:
                found = held.enter_context(_checked_copy(where, record.archive_sha256, tried))
            except Exception as exc:  # any source may fail its own way; it must not hide the next
                tried.append(f"{where} (could not read: {_reason(exc)})")
                continue
            if found is not None:
                return store.repair(agent, version, found), where, tried
    raise StoreError(f"{vdir}: no tarball with sha256 {record.archive_sha256} found (tried: "
                     f"{'; '.join(tried) or 'nothing'}); pass it: `kiln store repair {agent} "
                     f"{version} --from PATH_OR_URI`")


def _reason(exc: BaseException) -> str:
    """One line about why a source could not be read (botocore's own words where it has them)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else f"{text[:197]}..."


@contextlib.contextmanager
def _checked_copy(where: str, sha256: str, tried: list[str]) -> Iterator[Path | None]:
    """The local copy of `where` when its sha256 is `sha256`; else None, with why in `tried`."""
    from .artifacts.digest import sha256_file

    with _local_copy(where) as path:
        if path is None:
            tried.append(f"{where} (absent)")
            yield None
        elif sha256_file(path) != sha256:
            tried.append(f"{where} (other bytes)")
            yield None
        else:
            yield path


def _candidates(store: Any, agent: str, version: str, record: Any, registry: str | None,
                tried: list[str]) -> list[str]:
    """Where the version's tarball may be: the registry's artifacts for it (its S3 or file://
    copy, its dist directory), then this project's dist/ and published/ directories. A registry
    that cannot be read is noted in `tried`; the project's directories are still offered."""
    from .artifacts.names import ARCHIVE
    from .paths import Layout
    from .registry import layers

    out = []
    vdir = (store.root / agent / "versions" / version).absolute()
    try:
        entries = list(layers(registry).merged.values())
    except Exception as exc:  # a broken registry must not hide dist/ and published/
        tried.append(f"registry {registry or 'configs/'} (could not read: {_reason(exc)})")
        entries = []
    for entry in entries:
        art = entry.artifacts
        if art.store and Path(art.store).absolute() == vdir:
            out += [u for u in (art.s3, str(Path(art.local) / ARCHIVE) if art.local else None) if u]
    if record.name and record.version and record.backend:
        here = Layout.here()
        out.append(str(here.dist_dir(record.name, record.version, record.backend) / ARCHIVE))
        out.append(str(here.published / record.name / record.version / record.backend / ARCHIVE))
    return list(dict.fromkeys(out))


@contextlib.contextmanager
def _local_copy(where: str) -> Iterator[Path | None]:
    """A local path to the tarball `where` names (downloaded when it is not on this machine), or
    None if absent."""
    from . import transport
    from .artifacts import manifest as mf
    from .artifacts.names import ARCHIVE
    from .transport.schemes import local_path_of

    path = local_path_of(where)  # None: the tarball is elsewhere, fetched through its Location
    if path is not None:
        path = path / ARCHIVE if path.is_dir() else path
        yield path if path.is_file() else None
        return
    raw = transport.read_small(transport.sibling(where, mf.MANIFEST))
    if raw is None:
        yield None
        return
    archive = mf.loads_published(raw, where)["archive"]
    with tempfile.TemporaryDirectory(prefix="kiln-repair-") as d:
        dest = Path(d) / ARCHIVE
        transport.download(where, dest, size=archive["size"], sha256=archive["sha256"])
        yield dest


def registry_list(args: argparse.Namespace) -> int:
    from .registry import list_entries

    entries = list_entries(args.role, args.include_non_installed, registry_dir=_registry(args))
    if args.json:
        print(json.dumps([e.to_dict() | {"installed": e.installed} for e in entries], indent=2))
        return 0
    for e in entries:
        lock = "locked" if e.version_lock.locked else "unlocked"
        print(f"{e.name:28} {e.backend or '-':8} {e.version or '-':16} {lock:8} "
              f"{_short(e.aggregate_sha256)} roles={','.join(e.roles) or '-'} "
              f"task={e.task or '-'}")
    return 0


def registry_select(args: argparse.Namespace) -> int:
    from .registry import select

    s = select(args.name, args.require or (), registry_dir=_registry(args))
    if args.json:
        _json(s)
        return 0
    # key=value lines for a shell; a key the entry has no value for is left out, not printed
    # empty (`local=` read as "the current directory" by a script that cds there)
    for key in ("name", "backend", "version", "served_model_id", "store", "bundle", "local", "s3"):
        if getattr(s, key):
            print(f"{key}={getattr(s, key)}")
    if s.capabilities:
        print(f"capabilities={','.join(s.capabilities)}")
    return 0


def registry_verify(args: argparse.Namespace) -> int:
    from .registry import verify

    r = verify(args.name, registry_dir=_registry(args))
    if args.json:
        _json(r)
        return 0
    note = " (hash recorded: first verify)" if r.recorded else ""
    if r.not_recorded:
        note = " (not recorded)"
        print(f"kiln: warning: last_verified not written: {r.not_recorded}", file=sys.stderr)
    signed = f" signed_by={r.signed_by[:16]}" if r.signed_by else ""
    print(f"ok {r.name} aggregate={r.aggregate_sha256} files={r.files} "
          f"last_verified={r.last_verified}{signed}{note}")
    return 0


def registry_lock(args: argparse.Namespace) -> int:
    from .registry import lock

    entry = lock(args.name, args.set_expected, registry_dir=_registry(args))
    print(f"locked {entry.name} expected_hash={entry.version_lock.expected_hash}")
    return 0


def registry_unlock(args: argparse.Namespace) -> int:
    from .registry import unlock

    entry = unlock(args.name, registry_dir=_registry(args))
    print(f"unlocked {entry.name}")
    return 0


class _Sub:
    """Subparsers that each also take the group's location option (`kiln store list
    --store-root X` as well as `kiln store --store-root X list`). SUPPRESS as the default keeps
    a subcommand that was not given it from overwriting the value given before it."""

    def __init__(self, action: Any, option: str, help_: str):
        self.action, self.option, self.help = action, option, help_

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = self.action.add_parser(name, **kwargs)
        p.add_argument(self.option, default=argparse.SUPPRESS, help=self.help)
        return p


def _doc(description: str, *examples: str) -> dict[str, str]:
    """A subcommand's description= and its epilog= of examples (one per line)."""
    return {"description": description,
            "epilog": "examples:\n" + "\n".join(f"  {e}" for e in examples)}


JSON_HELP = "print JSON instead of text"


def add_parsers(sub: Any) -> None:
    """Register `store` and `registry` with their subcommands on the main parser."""
    st = sub.add_parser("store", help="the atomic on-disk model store (MODEL_STORE_ROOT)",
                        **_doc("The model store that `kiln publish` installs versions into and "
                               "serving hosts read: list, show the current version, roll back, "
                               "verify, repair and prune.", "kiln store list",
                               "kiln store --store-root /srv/models list registry"))
    st.add_argument("--store-root", help=STORE_ROOT_HELP)
    ss = _Sub(st.add_subparsers(dest="store_command", required=True, parser_class=type(st)),
              "--store-root", STORE_ROOT_HELP)
    agent = "the store's agent directory (the spec's publish.store.agent; `kiln store list`)"
    p = ss.add_parser("list", help="agents, or one agent's versions",
                      **_doc("Without AGENT: the agents in the store. With it: each version with "
                             "its sequence, file count, size, checksum and flags.",
                             "kiln store list", "kiln store list registry --json"))
    p.add_argument("agent", nargs="?", help=f"list this agent's versions; {agent}")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=store_list)
    docs = {"current": _doc("Prints the directory of the agent's current version (what a "
                            "serving host loads).", "kiln store current registry",
                            'cd "$(kiln store current registry)"'),
            "rollback": _doc("Points current at an earlier version, atomically (default: the "
                             "one before the current).", "kiln store rollback registry",
                             "kiln store rollback registry 2.9.0"),
            "verify": _doc("Re-hashes every file of a version against its sealed manifest; "
                           "exit 2 naming the files that drifted.", "kiln store verify registry",
                           "kiln store verify registry 3.0.0 --json")}
    for name, func, help_ in (("current", store_current, "path of the current version"),
                              ("rollback", store_rollback, "point current at an earlier version"),
                              ("verify", store_verify, "re-hash a version (exit 2 on drift)")):
        p = ss.add_parser(name, help=help_, **docs[name])
        p.add_argument("agent", help=agent)
        if name != "current":
            p.add_argument("version", nargs="?", help="default: the current (verify) or previous (rollback)")
        if name != "rollback":
            p.add_argument("--json", action="store_true", help=JSON_HELP)
        p.set_defaults(func=func)
    p = ss.add_parser("prune", help="keep the newest N versions (never the current, a pinned "
                      "or locked one, nor one the registry names)",
                      **_doc("Removes the agent's oldest versions beyond the newest --keep; the "
                             "current, pinned and locked versions and those a registry entry "
                             "names are always kept.", "kiln store prune registry --keep 5"))
    p.add_argument("agent", help=agent)
    p.add_argument("--keep", type=int, default=3, help="how many of the newest versions to keep "
                   "(default: 3)")
    p.add_argument("--registry-dir", help="registry whose entries protect their versions "
                   "(default: $KILN_REGISTRY_DIR, else ./configs)")
    p.set_defaults(func=store_prune)
    p = ss.add_parser("repair", help="restore a damaged version from the tarball it was "
                      "published from (checked against its recorded sha256)",
                      **_doc("Verifies the version and, when it drifted, restores it from the "
                             "first tarball (registry copy, dist/, published/ or --from) whose "
                             "sha256 is the one its manifest sealed.",
                             "kiln store repair registry",
                             "kiln store repair registry 3.0.0 --from s3://models/registry-v3/"))
    p.add_argument("agent", help=agent)
    p.add_argument("version", nargs="?", help="default: the current version")
    p.add_argument("--from", dest="source", metavar="PATH_OR_URI",
                   help="the bundle.tar.gz (or its directory / URI); default: the registry's "
                   "artifacts, then dist/ and published/ of this project")
    p.add_argument("--registry-dir", help=REGISTRY_DIR_HELP)
    p.set_defaults(func=store_repair)

    rg = sub.add_parser("registry", help="the layered registry: list, select, verify, lock",
                        **_doc("The registry of published bundles (curated and discovered "
                               "layers): list entries, select one for serving, verify its bytes, "
                               "lock its hash.", "kiln registry list",
                               "kiln registry --registry-dir configs select registry-v3-onnx"))
    rg.add_argument("--registry-dir", help=REGISTRY_DIR_HELP)
    rs = _Sub(rg.add_subparsers(dest="registry_command", required=True, parser_class=type(rg)),
              "--registry-dir", REGISTRY_DIR_HELP)
    entry = "registry entry name (`kiln registry list` shows them)"
    p = rs.add_parser("list", help="entries, by default only those installed here",
                      **_doc("One line per entry: name, backend, version, lock state, aggregate "
                             "hash and roles.", "kiln registry list",
                             "kiln registry list --role triage --include-non-installed --json"))
    p.add_argument("--role", help="only entries that have this role")
    p.add_argument("--include-non-installed", action="store_true",
                   help="also entries whose files are not on this host")
    p.add_argument("--json", action="store_true", help="print the entries as JSON, each with "
                   "`installed`")
    p.set_defaults(func=registry_list)
    p = rs.add_parser("select", help="resolved paths and served model id (exit 4 if a capability is missing)",
                      **_doc("Prints key=value lines (name, backend, version, served_model_id, "
                             "store, bundle, local, s3, capabilities) for a shell; a key without "
                             "a value is left out.", "kiln registry select registry-v3-onnx",
                             "kiln registry select registry-v3-onnx --require onnx-int8 --json"))
    p.add_argument("name", help=entry)
    p.add_argument("--require", action="append", metavar="CAPABILITY",
                   help="fail with exit 4 unless the entry has this capability (repeatable)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=registry_select)
    for name, func, help_, doc in (
            ("verify", registry_verify, "re-hash; exit 2 naming every changed file",
             _doc("Re-hashes the entry's files against its recorded (or locked) aggregate hash "
                  "and writes last_verified; exit 2 naming every changed file.",
                  "kiln registry verify registry-v3-onnx", "kiln registry verify triage-v1-pytorch --json")),
            ("unlock", registry_unlock, "clear the version lock",
             _doc("Clears the entry's version lock, so a new publish may replace it.",
                  "kiln registry unlock registry-v3-onnx"))):
        p = rs.add_parser(name, help=help_, **doc)
        p.add_argument("name", help=entry)
        if name == "verify":
            p.add_argument("--json", action="store_true", help=JSON_HELP)
        p.set_defaults(func=func)
    p = rs.add_parser("lock", help="lock the entry's hash",
                      **_doc("Locks the entry to its expected hash: a publish or verify that "
                             "finds other bytes exits 2.", "kiln registry lock registry-v3-onnx",
                             "kiln registry lock registry-v3-onnx --set-expected"))
    p.add_argument("name", help=entry)
    p.add_argument("--set-expected", action="store_true", help="accept the current bytes' hash")
    p.set_defaults(func=registry_lock)
