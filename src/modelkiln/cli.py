"""`kiln`: argv -> api call -> exit code. The only module that prints for humans.

Exit codes: `errors.ExitCode`, the one table (a KilnError carries its own; the CLI adds usage,
`plan --check` and interrupted).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__, api, cli_admin, cli_lock, cli_plugins, cli_review, cli_sign, cli_ui
from .cache import CacheConfig
from .errors import ExitCode, KilnError, SpecError

if TYPE_CHECKING:
    from .publish.oci import OciRelease


class _Formatter(argparse.HelpFormatter):
    """Descriptions are wrapped; a text with line breaks (an epilog's examples, one per line)
    keeps them."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on a usage error, which is our hash-drift code: use 64 (EX_USAGE)."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"kiln: error: {message}\n")
        raise SystemExit(ExitCode.USAGE)


def _skip(values: Sequence[str] | None) -> frozenset[str]:
    return frozenset(s.strip() for v in values or () for s in v.split(",") if s.strip())


def _jobs(value: str) -> int:
    """`-j N`: 1 or more processes; 0 or a negative count is a mistake, not "serial"."""
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a number of processes, 1 or more")
    return n


def _cache_uri(value: str) -> str:
    """`--cache`: checked as the option is read, so a wrong scheme is a usage error (64)."""
    from .cache.config import OFF
    from .transport.schemes import supports

    if value.strip().lower() not in OFF and not supports(value):  # any installed transport
        raise argparse.ArgumentTypeError(f"{value!r} is not s3://bucket/prefix, file:///path "
                                         "or 'off'")
    return value


def cmd_validate(args: argparse.Namespace) -> int:
    """Every spec that validates gets its `ok` line, then the problems of the others (exit 3)."""
    if cli_review.wants(args):  # --format github / --schema-only (CI, pre-commit)
        return cli_review.cmd_validate(args)
    bundles, broken = api.load_bundles_partial(api.discover(args.specs))
    if getattr(args, "json", False):  # every spec, healthy or not; exit 3 still says "not all"
        print(json.dumps(
            [{"spec": str(b.spec_path), "name": b.name, "version": b.version,
              "backends": list(b.backends), "ok": True, "problems": []} for b in bundles]
            + [{"spec": str(b.spec_path), "name": b.name or None, "ok": False,
                "problems": [str(p) for p in b.problems]} for b in broken], indent=2))
        return ExitCode.SPEC if broken else ExitCode.OK
    for b in bundles:
        print(f"ok  {b.spec_path.name}: {b.name} {b.version} ({', '.join(b.backends)})")
    if broken:
        raise SpecError([p for spec in broken for p in spec.problems])
    return ExitCode.OK


def _cache(args: argparse.Namespace) -> CacheConfig:
    return api.cache_config(args.specs, args.cache, True if args.cache_write else None)


def cmd_plan(args: argparse.Namespace) -> int:
    if args.changed_since:
        names, _ = api.changed(args.changed_since, args.specs)
        if args.json:
            print(json.dumps(names))
        elif names:
            print("\n".join(names))
        else:  # stdout stays empty for a `for b in $(...)` loop; the note is for a person
            print(f"kiln: no bundle changed since {args.changed_since}", file=sys.stderr)
        return ExitCode.OK
    if args.markdown:  # a spec that does not validate: at the top of the comment, exit 3
        md, broken = api.plan_markdown(args.specs, _skip(args.skip), _cache(args), args.base)
        print(md, end="")
        return ExitCode.SPEC if broken else ExitCode.OK
    rows, broken = api.plan_partial(args.specs, _skip(args.skip), _cache(args))
    if broken:  # first, and on stderr: the plan of every other spec still follows (exit 3)
        problems = [str(p) for spec in broken for p in spec.problems]
        print(f"kiln: {len(broken)} spec{'s do' if len(broken) != 1 else ' does'} not validate "
              "(not planned; the others are):\n" + "\n".join(problems), file=sys.stderr)
    if args.json:
        print(json.dumps([{"task": r.task, "run": r.run, "action": r.action,
                           "restore_bytes": r.restore_bytes, "reasons": list(r.reasons)}
                          for r in rows], indent=2))
    else:
        for r in rows:
            if r.run:
                print(f"{r.action:<4} {r.task}")
                for reason in r.reasons:
                    print(f"       {reason}")
            elif r.action == "skip":
                print(f"skip {r.task} ({'; '.join(r.reasons)})")
            else:
                print(f"ok   {r.task}")
        hits = sum(r.action == "hit" for r in rows)
        todo = sum(r.run for r in rows) - hits
        print(f"{todo} of {len(rows)} tasks would run" + (f", {hits} restored from the cache"
                                                         if hits else ""))
    if broken:
        return ExitCode.SPEC
    if args.check and any(r.run for r in rows):  # the summary's two counts, together
        stale = sum(r.run for r in rows)
        print(f"kiln: plan --check: {stale} task{'s' if stale != 1 else ''} out of date here",
              file=sys.stderr)
        return ExitCode.OUT_OF_DATE
    return ExitCode.OK


def cmd_build(args: argparse.Namespace) -> int:
    failed = api.build(args.specs, args.task or (), args.jobs, _skip(args.skip),
                       cache=_cache(args), force=args.force, quiet=_level(args) < 0)
    if failed == ExitCode.DRIFT:  # a remote source's bytes differ from bundles/<name>.lock
        return ExitCode.DRIFT
    return ExitCode.FAILURE if failed else ExitCode.OK


def cmd_clean(args: argparse.Namespace) -> int:
    for name, removed in api.clean(args.bundles, args.specs):
        print(f"{name}: " + (", ".join(f"removed {p}" for p in removed) or "nothing built"))
    return ExitCode.OK


def cmd_completion(args: argparse.Namespace) -> int:
    """The script comes from shtab, which reads this parser: every subcommand and option added
    later completes without a hand-kept list."""
    import shtab

    print(shtab.complete(build_parser(), shell=args.shell), end="")
    return ExitCode.OK


def _level(args: argparse.Namespace) -> int:
    """-v / -q as one number: above 0 says more, below 0 only errors."""
    return int(getattr(args, "verbose", 0) or 0) - int(getattr(args, "quiet", 0) or 0)


class _Progress:
    """Bytes moved, redrawn on one line on a terminal; silent in CI logs."""

    def __init__(self, label: str, args: argparse.Namespace | None = None):
        quiet = args is not None and _level(args) < 0
        self.label, self.done, self.live = label, 0, sys.stderr.isatty() and not quiet

    def __call__(self, n: int) -> None:
        self.done += n
        if self.live:
            sys.stderr.write(f"\r{self.label}: {self.done / 2**20:,.1f} MiB")
            sys.stderr.flush()

    def close(self) -> None:
        if self.live and self.done:
            sys.stderr.write("\n")


def cmd_publish(args: argparse.Namespace) -> int:
    progress = _Progress("publish", args)
    try:
        releases = api.publish(args.specs, args.backend or (), to=args.to, force=args.force,
                               progress=progress)
    finally:
        progress.close()
    if args.json:  # the receipt: every field of every release, each digest pushed or recorded
        import dataclasses

        print(json.dumps([dataclasses.asdict(r) for r in releases], indent=2, default=str))
        return ExitCode.OK
    for r in releases:
        remote = r.remote
        what = _sent(remote.unchanged, remote.forced, remote.replaced, remote.bytes_uploaded)
        print(f"{r.name} {r.version} {r.backend}: {remote.destination} ({what})")
        if r.oci is not None:
            _print_oci(r.oci, remote_is_artifact=r.remote_is_artifact)
        if r.store is not None:
            state = ("repaired from the tarball" if r.store.repaired
                     else "unchanged" if r.store.noop else "finalized")
            print(f"  store: {r.store.path} ({state}, checksum {r.store.checksum[:12]})")
        print(f"  registry: {r.registry_name}")
    return ExitCode.OK


def _sent(unchanged: bool, forced: bool, replaced: str | None, sent: int) -> str:
    """What one upload did, in the words every publish line uses."""
    if unchanged:
        return "unchanged, uploaded nothing"
    if forced:
        return f"FORCED: replaced {replaced} ({sent} bytes)"
    return f"{sent} bytes uploaded"


def _print_oci(oci: OciRelease, *, remote_is_artifact: bool) -> None:
    """The model artifact and serving image: pushed (where, what was sent) or kept in the layout."""
    signed = ", signed" if oci.signed else ""
    for label, pushed, ref in (("oci artifact", oci.artifact, oci.artifact_ref),
                               ("oci image", oci.image, oci.image_ref)):
        if pushed is not None and not (remote_is_artifact and pushed is oci.artifact):
            what = _sent(pushed.unchanged, pushed.forced, pushed.replaced, pushed.bytes_uploaded)
            print(f"  {label}: {pushed.pinned} ({what}{signed})")
        elif pushed is None and ref is not None:
            print(f"  {label}: {ref} (layout, not pushed{signed})")


def cmd_bootstrap(args: argparse.Namespace) -> int:
    progress = _Progress("download", args)
    try:
        runtime = api.bootstrap(progress=progress)
    finally:
        progress.close()
    if args.json:
        print(json.dumps(runtime.as_json(), indent=2, sort_keys=True))
    else:
        sys.stdout.write(runtime.shell())
    return ExitCode.OK


def cmd_base(args: argparse.Namespace) -> int:
    out = Path(args.dir)
    include = [p for v in args.include or ["python3,ca-certificates"] for p in v.split(",") if p]
    digest = api.make_base(out, args.suite, include, force=args.force)
    print(f"base: oci:{out}@{digest}")
    print(f"name it in a spec as  image.base: oci:{out}  (a path relative to the spec file), or "
          f"push it (skopeo copy oci:{out}:base docker://REGISTRY/REPO) and pin REPO@{digest}")
    return 0


def cmd_image_lock(args: argparse.Namespace) -> int:
    done = api.image_lock(args.specs)
    for name, path in done:
        print(f"{name}: {path} written (review and commit it)")
    if not done:
        print("no spec has an image: section that installs its libraries from a lock")
    return 0


def _image_parsers(sub: Any) -> None:
    b = sub.add_parser("base", help="make a Debian base image with python3 from Debian's "
                       "packages (mmdebstrap, as root) as an OCI layout",
                       description="Runs mmdebstrap with the host's apt sources and writes the "
                       "root filesystem as a one-layer OCI image layout in DIR.",
                       epilog="examples:\n  kiln base bases/debian-bookworm-python3\n"
                       "  kiln base bases/trixie --suite trixie --include python3,libgomp1")
    b.add_argument("dir", help="the OCI layout directory to write")
    b.add_argument("--suite", default="bookworm", help="Debian suite (default: bookworm)")
    b.add_argument("--force", action="store_true",
                   help="make it again even when DIR already holds a base layout")
    b.add_argument("--include", action="append",
                   help="packages to install (default: python3,ca-certificates)")
    b.set_defaults(func=cmd_base)

    lk = sub.add_parser("image-lock", help="resolve each serving image's libraries into "
                        "bundles/<name>.image.lock (wheels with sha256)",
                        description="Asks pip (no install) for wheels of the image's Python and "
                        "platform and writes them with their hashes beside the spec.",
                        epilog="examples:\n  kiln image-lock\n  kiln image-lock "
                        "bundles/registry-v3.yaml")
    lk.add_argument("specs", nargs="*", help="spec files or directories (default: bundles/)")
    lk.set_defaults(func=cmd_image_lock)


def _cache_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache", metavar="URI", type=_cache_uri, help="action cache: s3://bucket/prefix, "
                   "file:///path or 'off' (default: $KILN_CACHE_URI, [tool.modelkiln] cache, "
                   "file://<project>/.kiln/cache)")
    p.add_argument("--cache-write", action="store_true", help="save what this run builds to "
                   "the cache (trusted branches only; $KILN_CACHE_WRITE=1)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="kiln", description="Build, publish and serve ML model bundles from YAML specs.",
                epilog="examples:\n  kiln validate\n  kiln plan\n  kiln build\n"
                "  kiln publish --to local\n  kiln <command> --help")
    p.add_argument("--version", action="version", version=f"modelkiln {__version__}")
    _verbosity_args(p, 0)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    v = sub.add_parser("validate", help="check specs against the schema and each other",
                       description="Loads every spec, checks it against schema/bundle.schema.json "
                       "and the files it names; prints `ok` for each spec that validates, then "
                       "every problem of the others (exit 3).",
                       epilog="examples:\n  kiln validate\n  kiln validate bundles/registry-v3.yaml"
                       " --json")
    v.add_argument("specs", nargs="*", help="spec files or directories (default: bundles/)")
    v.add_argument("--json", action="store_true", help="one JSON object per spec: ok, name, "
                   "version, backends, problems")
    cli_review.validate_options(v)
    v.set_defaults(func=cmd_validate)

    pl = sub.add_parser("plan", help="show what a build would run and why, without running it",
                        description="Reads the stamps (and the action cache) and says, per task, "
                        "whether it is up to date, would be restored from the cache, or would "
                        "run and why. Nothing is built.",
                        epilog="examples:\n  kiln plan\n  kiln plan --check   # exit 6 when "
                        "anything would run (CI)\n  kiln plan --json --skip onnx")
    pl.add_argument("specs", nargs="*", help="spec files or directories (default: bundles/)")
    pl.add_argument("--json", action="store_true", help="machine-readable output")
    pl.add_argument("--check", action="store_true",
                    help=f"exit {int(ExitCode.OUT_OF_DATE)} when anything would run (CI)")
    pl.add_argument("--skip", action="append", metavar="BACKEND", help="leave a backend out (onnx)")
    pl.add_argument("--markdown", action="store_true",
                    help="the plan as a pull-request comment, with deltas against --base")
    pl.add_argument("--base", metavar="REF", help="git ref to compare specs and figures with "
                    "(e.g. origin/main)")
    pl.add_argument("--changed-since", metavar="REF", help="only list the bundles whose spec "
                    "or inputs changed since git REF (with --json: a list for a CI matrix)")
    _cache_args(pl)
    pl.set_defaults(func=cmd_plan)

    b = sub.add_parser("build", help="build bundles incrementally (the doit graph)",
                       description="Runs the doit task graph of the specs: each task reruns only "
                       "when its stamp says an input, the spec section or an upstream output "
                       "changed, or restores its outputs from the action cache.",
                       epilog="examples:\n  kiln build\n  kiln build -t onnx:registry-v3 -j 2\n"
                       "  kiln build --force -t thresholds:registry-v3   # rerun it whatever its "
                       "stamp says\n  kiln build --skip onnx")
    b.add_argument("specs", nargs="*", help="spec files or directories (default: bundles/)")
    b.add_argument("-t", "--task", action="append", help="run only these doit tasks (names, "
                   "stages such as `onnx`, or `*` patterns; `doit list --all` lists them)")
    b.add_argument("-j", "--jobs", type=_jobs, default=1,
                   help="parallel processes, 1 or more (default: 1)")
    b.add_argument("--force", action="store_true", help="rerun the -t tasks (without -t: every "
                   "task) whatever their stamps say, running each stage instead of restoring it "
                   "from the cache (like `doit -a`)")
    b.add_argument("--skip", action="append", metavar="BACKEND", help="leave a backend out (onnx)")
    _cache_args(b)
    b.set_defaults(func=cmd_build)

    pb = sub.add_parser("publish", help="publish built bundles to S3/file://, the store, the registry",
                        description="Uploads each built backend bundle (tarball first, manifest "
                        "last), installs it in the model store, pushes OCI artifacts and images "
                        "where the spec says so, and records the result in the registry.",
                        epilog="examples:\n  kiln publish --to local\n  kiln publish "
                        "--backend onnx --to local   # the bundles that have an onnx backend\n"
                        "  kiln publish bundles/registry-v3.yaml --json > receipt.json")
    pb.add_argument("specs", nargs="*", help="spec files or directories (default: bundles/)")
    pb.add_argument("--backend", action="append", help="only this backend (repeatable); without "
                    "specs, bundles that lack it are left out")
    pb.add_argument("--json", action="store_true", help="print a JSON receipt: every release "
                    "with each digest pushed or recorded")
    pb.add_argument("--to", help="destination template overriding the spec's publish.s3 "
                    "('local' = file://<project>/published/{name}/{version}/{backend}/)")
    pb.add_argument("--force", action="store_true",
                    help="replace a published version that holds different bytes (logged)")
    pb.set_defaults(func=cmd_publish)

    bs = sub.add_parser("bootstrap", help="fetch, verify and unpack the bundle named by "
                        "MODEL_BACKEND / MODEL_BUNDLE_S3_URI_* / MODEL_BUNDLE_OCI_REF; print the "
                        "REGISTRY_* paths",
                        description="On a serving host: reads MODEL_BACKEND and the bundle's "
                        "location (MODEL_BUNDLE_S3_URI_<BACKEND>, an s3:// or file:// URI, or "
                        "MODEL_BUNDLE_OCI_REF[_<BACKEND>], an OCI artifact), fetches it, checks "
                        "every digest (and the signature with REGISTRY_TRUSTED_KEYS), unpacks it "
                        "and prints `export REGISTRY_*=...` lines for the serving app.",
                        epilog="examples:\n  MODEL_BACKEND=onnx MODEL_BUNDLE_S3_URI_ONNX=s3://b/"
                        "registry-v3/3.0.0/onnx/ eval \"$(kiln bootstrap)\"\n"
                        "  MODEL_BACKEND=onnx MODEL_BUNDLE_OCI_REF=reg.example/models/"
                        "registry-v3@sha256:... kiln bootstrap --json")
    bs.add_argument("--json", action="store_true", help="print a JSON report instead of exports")
    bs.set_defaults(func=cmd_bootstrap)

    cli_admin.add_parsers(sub)
    cli_sign.add_parsers(sub)
    cli_lock.add_parsers(sub)
    cli_review.add_parsers(sub)
    cli_ui.add_parsers(sub)
    cli_plugins.add_parsers(sub)
    _image_parsers(sub)
    _tool_parsers(sub)
    for leaf in leaf_parsers(p):  # -q/-v after the subcommand too (SUPPRESS keeps one before it)
        if leaf is not p:
            _verbosity_args(leaf, argparse.SUPPRESS)
    return p


def _verbosity_args(p: argparse.ArgumentParser, default: Any) -> None:
    p.add_argument("-q", "--quiet", action="count", default=default,
                   help="only errors: no progress or summary lines (--json output still printed)")
    p.add_argument("-v", "--verbose", action="count", default=default,
                   help="say more (the action cache in use for plan and build)")


def leaf_parsers(p: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """`p` and every (sub)subcommand parser under it, in the order they were added."""
    out = [p]
    for action in p._actions:  # argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases repeat a parser
                out += leaf_parsers(child)
    return out


def _tool_parsers(sub: Any) -> None:
    c = sub.add_parser("clean", help="remove what the build wrote for bundles (build/<name>/, "
                       "dist/<name>/)",
                       description="Removes each bundle's stage outputs and stamps (build/<name>/) "
                       "and its packages and OCI layouts (dist/<name>/), so the next build runs "
                       "every task. Published copies, the model store and the action cache are "
                       "kept. `doit clean TASK` cleans one task the same way.",
                       epilog="examples:\n  kiln clean registry-v3\n  kiln clean   # every bundle")
    c.add_argument("bundles", nargs="*", metavar="BUNDLE",
                   help="bundle names (default: every bundle of the specs and every one built)")
    c.add_argument("--specs", action="append", default=[], metavar="SPEC",
                   help="spec files or directories that name the bundles (default: bundles/)")
    c.set_defaults(func=cmd_clean)

    cp = sub.add_parser("completion", help="print a shell completion script for kiln",
                        description="Prints a completion script generated from kiln's own "
                        "parser (shtab), so every subcommand and option completes.",
                        epilog="examples:\n  eval \"$(kiln completion bash)\"\n"
                        "  kiln completion zsh > ~/.zfunc/_kiln")
    cp.add_argument("shell", choices=("bash", "zsh", "tcsh"), help="the shell to complete in")
    cp.set_defaults(func=cmd_completion)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    quiet = _level(args) < 0 and func is not cmd_build and not getattr(args, "json", False)
    try:
        if _level(args) > 0 and hasattr(args, "cache_write"):  # plan, build
            print(f"kiln: {_cache(args).describe()}", file=sys.stderr)
        with contextlib.redirect_stdout(open(os.devnull, "w")) if quiet \
                else contextlib.nullcontext():  # build: doit's reporter is told instead
            return func(args)
    except KilnError as exc:
        print(f"kiln: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("kiln: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:  # `kiln plan | head`: the reader left; that is not our failure
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
