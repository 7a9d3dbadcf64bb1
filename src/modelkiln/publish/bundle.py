"""What every publisher starts from (a checked dist directory) and what it reports.

A publisher must never send bytes it has not checked: `DistBundle.load` re-derives the tarball's
sha256 (through the stat cache when the build left one, so an untouched tarball is not re-read)
and refuses a dist directory whose tarball and published manifest disagree.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..artifacts import manifest as mf
from ..artifacts import names
from ..artifacts.digest import StatCache, sha256_file
from ..errors import KilnError, PublishError
from ..signing import Sidecar, sidecars

Progress = Callable[[int], None]


@dataclass(frozen=True)
class DistBundle:
    """A built `dist/<name>/<version>/<backend>/` directory whose tarball matches its manifest."""

    directory: Path
    archive: Path
    manifest_bytes: bytes
    name: str
    version: str
    backend: str
    size: int
    sha256: str
    # bundle.sig + provenance.sigstore.json when signed: published after the tarball, before
    # the manifest; checked here to belong to these manifest bytes
    signatures: tuple[Sidecar, ...] = ()

    @classmethod
    def load(cls, dist_dir: Path, cache: StatCache | None = None) -> DistBundle:
        """Read and check `dist_dir`; PublishError says to rebuild when anything is off."""
        dist_dir = Path(dist_dir)
        archive, manifest_path = dist_dir / names.ARCHIVE, dist_dir / names.MANIFEST
        if not archive.is_file() or not manifest_path.is_file():
            raise PublishError(f"{dist_dir}: no {names.ARCHIVE} + {names.MANIFEST} here; build the "
                               "bundle first (`kiln build`)")
        raw = manifest_path.read_bytes()
        manifest = mf.loads_published(raw, str(manifest_path))  # name, version, archive checked
        entry = manifest["archive"]
        size = archive.stat().st_size
        digest = cache.digest(archive) if cache is not None else sha256_file(archive)
        if size != entry["size"] or digest != entry["sha256"]:
            raise PublishError(f"{archive}: size {size} / sha256 {digest} differ from "
                               f"{manifest_path} ({entry['size']} / {entry['sha256']}); "
                               "the dist directory is damaged, rebuild it (`kiln build`)")
        return cls(directory=dist_dir, archive=archive, manifest_bytes=raw,
                   name=manifest["name"], version=manifest["version"],
                   backend=manifest["backend"], size=size, sha256=digest,
                   signatures=sidecars(dist_dir, raw))


@dataclass(frozen=True)
class PublishResult:
    """What one publish did. `unchanged`: the same bytes were already there, nothing was written.

    `uploaded` names the objects written this run, in order (tarball before manifest);
    `skipped` those already present with the right sha256 (a re-run after an interruption);
    `forced` is True when force=True replaced a different published version, whose archive
    sha256 is `replaced`.
    """

    destination: str
    archive_uri: str
    manifest_uri: str
    name: str
    version: str
    backend: str
    archive_sha256: str
    uploaded: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    bytes_uploaded: int = 0
    unchanged: bool = False
    forced: bool = False
    replaced: str | None = None


def existing_archive_sha(raw: bytes, origin: str) -> str:
    """The archive sha256 recorded in an already-published manifest ('<unreadable>' if none)."""
    try:
        return mf.loads_published(raw, origin)["archive"]["sha256"]
    except KilnError:
        return "<unreadable>"
