"""Hostile archives against `kiln bootstrap`, beside the standard library's safe extraction.

    python bench/reliability/archives.py              # every case in tests/hostile_corpus.py
    python bench/reliability/archives.py --wall 30    # kill a run after 30 s (default 10)

`archives_row` runs every hostile archive of the corpus through the real `kiln bootstrap` (each
published under a file:// prefix with a manifest that matches it, after a good version was
installed) and counts: tried, refused cleanly (exit 1, one `kiln:` line, no traceback), accepted
(exit 0), tracebacks, hangs (killed at the wall limit), the largest wall and CPU seconds and the
largest peak RSS (the process's own, from wait4). `peer_row` unpacks the same archives with
Python's `tarfile.extractall(filter="data")`, the standard library's answer to unsafe archives,
in a fresh interpreter under the same limits (file size capped at 256 MiB so a bomb cannot fill
the disk; writing past it counts as accepted). Never asserts; the campaign runner imports the
row functions, `main` prints them as a table.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from hostile_archives import Case, Outcome, publish, run_command, try_case  # noqa: E402
from hostile_corpus import HOSTILE  # noqa: E402
from modelkiln.artifacts import manifest as mf  # noqa: E402

# The peer: stdlib extraction with the 'data' filter; a known error is a clean refusal.
PEER = r"""
import errno, resource, signal, sys, tarfile, zlib
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 20, 256 << 20))
try:
    with tarfile.open(sys.argv[1], "r:gz") as tar:
        tar.extractall(sys.argv[2], filter="data")
except OSError as exc:
    if exc.errno == errno.EFBIG:
        print("peer: accepted, wrote past 256 MiB", file=sys.stderr)
        sys.exit(0)
    print(f"peer: {exc}", file=sys.stderr)
    sys.exit(1)
except (tarfile.TarError, EOFError, zlib.error) as exc:
    print(f"peer: {exc}", file=sys.stderr)
    sys.exit(1)
"""


@dataclass
class ArchivesRow:
    """One line of the table; `notes` names the first few cases that were not clean refusals."""

    who: str
    tried: int = 0
    refused_cleanly: int = 0
    accepted: int = 0
    tracebacks: int = 0
    hangs: int = 0
    max_seconds: float = 0.0
    max_cpu_seconds: float = 0.0
    max_mib: float = 0.0
    notes: list[str] = field(default_factory=list)

    def add(self, case: str, out: Outcome, clean: bool) -> None:
        self.tried += 1
        self.refused_cleanly += clean
        self.accepted += out.returncode == 0 and not out.hung
        self.tracebacks += out.traceback
        self.hangs += out.hung
        self.max_seconds = max(self.max_seconds, out.seconds)
        self.max_cpu_seconds = max(self.max_cpu_seconds, out.cpu_seconds)
        self.max_mib = max(self.max_mib, out.max_rss_mib)
        if not clean and len(self.notes) < 12:
            what = ("hang" if out.hung else "traceback" if out.traceback
                    else "accepted" if out.returncode == 0 else f"exit {out.returncode}")
            self.notes.append(f"{case}: {what}")


def archives_row(wall_limit: float = 10.0, cases: list[Case] = HOSTILE) -> ArchivesRow:
    """The corpus through `kiln bootstrap`: a refusal is clean only if it is also contained
    (`current` unchanged, nothing written anywhere)."""
    row = ArchivesRow("kiln bootstrap")
    for case in cases:
        with tempfile.TemporaryDirectory(prefix="kiln-archives-") as tmp:
            trial = try_case(case, Path(tmp), wall_limit)
            contained = trial.current_after == trial.current_before and not trial.changed
            row.add(case.name, trial.outcome, trial.outcome.clean_refusal and contained)
    return row


def peer_row(wall_limit: float = 10.0, cases: list[Case] = HOSTILE) -> ArchivesRow:
    """The same archives through tarfile.extractall(filter="data") in a fresh interpreter."""
    row = ArchivesRow('tarfile filter="data"')
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    for case in cases:
        with tempfile.TemporaryDirectory(prefix="kiln-archives-peer-") as tmp:
            root = Path(tmp)
            hostile = case.make(root / "outside")
            publish(root / "bucket", hostile)
            archive = root / "bucket" / mf.ARCHIVE
            (root / "dest").mkdir()
            out = run_command([sys.executable, "-c", PEER, str(archive), str(root / "dest")],
                              env, root, wall_limit)
            lines = out.stderr.splitlines()
            row.add(case.name, out, out.returncode == 1 and len(lines) == 1 and not out.hung)
    return row


def table(rows: list[ArchivesRow]) -> str:
    head = ["extractor", "archives tried", "refused cleanly", "tracebacks", "hangs",
            "max seconds", "max MiB", "accepted", "max CPU s"]
    cells: list[list[str]] = [head] + [
        [r.who, str(r.tried), str(r.refused_cleanly), str(r.tracebacks), str(r.hangs),
         f"{r.max_seconds:.2f}", f"{r.max_mib:.0f}", str(r.accepted), f"{r.max_cpu_seconds:.2f}"]
        for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]

    def fmt(c: list[str]) -> str:
        return "  ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)).rstrip()

    return "\n".join([fmt(cells[0]), fmt(["-" * w for w in widths]), *map(fmt, cells[1:])])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wall", type=float, default=10.0, help="kill a run after this many seconds")
    ap.add_argument("--no-peer", action="store_true", help="skip the tarfile row")
    args = ap.parse_args()
    print(f"# {platform.python_implementation()} {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
          f"{len(HOSTILE)} hostile archives; wall limit {args.wall:.0f} s")
    rows = [archives_row(args.wall)] + ([] if args.no_peer else [peer_row(args.wall)])
    print(table(rows))
    for row in rows:
        for note in row.notes:
            print(f"  {row.who}: {note}")


if __name__ == "__main__":
    main()
