"""`kiln`: argv -> api call -> exit code. The only module that prints for humans.

Exit codes: `errors.ExitCode`, the one table (a KilnError carries its own; the CLI adds usage,
`plan --check` and interrupted).
"""
from __future__ import annotations

import argparse
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


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on a usage error, which is our hash-drift code: use 64 (EX_USAGE)."""

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
    from .transport.uris import scheme_of

    if value.strip().lower() not in OFF and scheme_of(value) not in ("s3", "file"):
        raise argparse.ArgumentTypeError(f"{value!r} is not s3://bucket/prefix, file:///path "
                                         "or 'off'")
    return value


def cmd_validate(args: argparse.Namespace) -> int:
    """Every spec that validates gets its `ok` line, then the problems of the others (exit 3)."""
    if cli_review.wants(args):  # --format github / --schema-only (CI, pre-commit)
        return cli_review.cmd_validate(args)
    bundles, broken = api.load_bundles_partial(api.discover(args.specs))
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
        print(f"kiln: plan --check: {sum(r.run for r in rows)} tasks out of date here",
              file=sys.stderr)
        return ExitCode.OUT_OF_DATE
    return ExitCode.OK


def cmd_build(args: argparse.Namespace) -> int:
    failed = api.build(args.specs, args.task or (), args.jobs, _skip(args.skip),
                       cache=_cache(args))
    if failed == ExitCode.DRIFT:  # a remote source's bytes differ from bundles/<name>.lock
        return ExitCode.DRIFT
    return ExitCode.FAILURE if failed else ExitCode.OK


class _Progress:
    """Bytes moved, redrawn on one line on a terminal; silent in CI logs."""

    def __init__(self, label: str):
        self.label, self.done, self.live = label, 0, sys.stderr.isatty()

    def __call__(self, n: int) -> None:
        self.done += n
        if self.live:
            sys.stderr.write(f"\r{self.label}: {self.done / 2**20:,.1f} MiB")
            sys.stderr.flush()

    def close(self) -> None:
        if self.live and self.done:
            sys.stderr.write("\n")


def cmd_publish(args: argparse.Namespace) -> int:
    progress = _Progress("publish")
    try:
        releases = api.publish(args.specs, args.backend or (), to=args.to, force=args.force,
                               progress=progress)
    finally:
        progress.close()
    for r in releases:
        remote = r.remote
        what = _sent(remote.unchanged, remote.forced, remote.replaced, remote.bytes_uploaded)
        print(f"{r.name} {r.version} {r.backend}: {remote.destination} ({what})")
        if r.oci is not None:
            _print_oci(r.oci, remote_is_artifact=r.remote.destination.startswith("oci://"))
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
    progress = _Progress("download")
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
                       "root filesystem as a one-layer OCI image layout in DIR. Example: "
                       "kiln base bases/debian-bookworm-python3")
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
                        "platform and writes them with their hashes beside the spec. Example: "
                        "kiln image-lock bundles/registry-v3.yaml")
    lk.add_argument("specs", nargs="*", help="spec files or directories (default: bundles/)")
    lk.set_defaults(func=cmd_image_lock)


def _cache_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache", metavar="URI", type=_cache_uri, help="action cache: s3://bucket/prefix, "
                   "file:///path or 'off' (default: $KILN_CACHE_URI, [tool.modelkiln] cache, "
                   "file://<project>/.kiln/cache)")
    p.add_argument("--cache-write", action="store_true", help="save what this run builds to "
                   "the cache (trusted branches only; $KILN_CACHE_WRITE=1)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="kiln", description="Build, publish and serve ML model bundles from YAML specs.")
    p.add_argument("--version", action="version", version=f"modelkiln {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    v = sub.add_parser("validate", help="check specs against the schema and each other")
    v.add_argument("specs", nargs="*", help="spec files or directories (default: bundles/)")
    cli_review.validate_options(v)
    v.set_defaults(func=cmd_validate)

    pl = sub.add_parser("plan", help="show what a build would run and why, without running it")
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

    b = sub.add_parser("build", help="build bundles incrementally (the doit graph)")
    b.add_argument("specs", nargs="*", help="spec files or directories (default: bundles/)")
    b.add_argument("-t", "--task", action="append", help="run only these doit tasks")
    b.add_argument("-j", "--jobs", type=_jobs, default=1, help="parallel processes (1 or more)")
    b.add_argument("--skip", action="append", metavar="BACKEND", help="leave a backend out (onnx)")
    _cache_args(b)
    b.set_defaults(func=cmd_build)

    pb = sub.add_parser("publish", help="publish built bundles to S3/file://, the store, the registry")
    pb.add_argument("specs", nargs="*", help="spec files or directories (default: bundles/)")
    pb.add_argument("--backend", action="append", help="only this backend (repeatable)")
    pb.add_argument("--to", help="destination template overriding the spec's publish.s3 "
                    "('local' = file://<project>/published/{name}/{version}/{backend}/)")
    pb.add_argument("--force", action="store_true",
                    help="replace a published version that holds different bytes (logged)")
    pb.set_defaults(func=cmd_publish)

    bs = sub.add_parser("bootstrap", help="fetch, verify and unpack the bundle named by "
                        "MODEL_BACKEND / MODEL_BUNDLE_S3_URI_*; print the REGISTRY_* paths")
    bs.add_argument("--json", action="store_true", help="print a JSON report instead of exports")
    bs.set_defaults(func=cmd_bootstrap)

    cli_admin.add_parsers(sub)
    cli_sign.add_parsers(sub)
    cli_lock.add_parsers(sub)
    cli_review.add_parsers(sub)
    cli_ui.add_parsers(sub)
    cli_plugins.add_parsers(sub)
    _image_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
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
