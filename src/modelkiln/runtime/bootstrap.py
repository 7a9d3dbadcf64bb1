"""The serving-side bootstrap: fetch, verify, unpack and swap in a published bundle.

A serving app calls `bootstrap()` at start-up (or runs `kiln bootstrap` and evaluates its exports).
It reads the published `manifest.json` beside the bundle, and:

- if the version is already unpacked here and still looks as it did when it was verified, it
  downloads nothing (only the small manifest) and returns at once;
- otherwise it downloads `bundle.tar.gz`, checks its size and sha256 against the published
  manifest, unpacks it with `safe_extract` into a fresh hidden directory, checks every file against
  the bundle's own manifest (nothing missing, nothing extra, every sha256 right), renames it to
  `versions/<version>-<sha12>/`, records what it verified, and only then points `current` at it
  (a symlink replaced with os.replace). Any failure leaves `current` on the previous version.

"Cheap" verification of a cached version means: the published archive sha256 equals the one
recorded when the directory was verified, and every file's (size, mtime_ns, inode) is unchanged
and no file was added. That catches edits, truncation, deletion and replacement in milliseconds
without reading gigabytes; it cannot catch bit rot under an unchanged stat. `REGISTRY_VERIFY=full`
(or `verify="full"`) re-hashes every file instead.

Imports stay light: no torch, doit, transformers, yaml or jsonschema; boto3 only for s3:// URIs.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import signing, transport
from ..artifacts import manifest as mf
from ..artifacts import names
from ..artifacts.atomic import fsync_dir, swap_symlink, write_bytes
from ..artifacts.digest import canonical_json
from ..artifacts.extract_limits import Limits
from ..artifacts.install import unpack_checked
from ..artifacts.lock import FileLock
from ..errors import KilnError, PublishError
from . import engines

BACKENDS = ("pytorch", "onnx", "tensorrt")
URI_ENV = {"pytorch": "MODEL_BUNDLE_S3_URI_PYTORCH", "onnx": "MODEL_BUNDLE_S3_URI_ONNX",
           "tensorrt": "MODEL_BUNDLE_S3_URI_TENSORRT"}
DEFAULT_RUNTIME_DIR = "data/models/registry_runtime"
ONNX_MODEL = names.ONNX_INT8
RECORD_SUFFIX = ".verified.json"
KEEP = 2  # versions kept on disk: current and the one before (running workers, quick rollback)
# What the spec schema allows a version to be; it names a directory here, so nothing else passes.
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


@dataclass(frozen=True)
class Runtime:
    """A verified, unpacked bundle and the paths a serving app needs from it."""

    backend: str
    version: str
    directory: Path
    archive_sha256: str
    downloaded: bool
    paths: Mapping[str, str] = field(default_factory=dict)
    engine: Mapping[str, Any] | None = None  # tensorrt: the engine chosen (or not) and why

    def exports(self) -> dict[str, str]:
        """Environment variables for the serving app (what `kiln bootstrap` prints as exports)."""
        return {"MODEL_BACKEND": self.backend, "REGISTRY_MODEL_VERSION": self.version,
                **self.paths}

    def shell(self) -> str:
        """`export NAME='value'` lines for `eval "$(kiln bootstrap)"` (values shell-quoted)."""
        return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in self.exports().items())

    def as_json(self) -> dict[str, Any]:
        """The machine-readable report (`kiln bootstrap --json`)."""
        return {"model_backend": self.backend, "model_version": self.version,
                "directory": str(self.directory), "archive_sha256": self.archive_sha256,
                "downloaded": self.downloaded, "exports": self.exports(),
                **({"tensorrt": dict(self.engine)} if self.engine is not None else {})}


def bootstrap(env: Mapping[str, str] | None = None, progress: transport.Progress | None = None, *,
              verify: str | None = None,
              settings: transport.TransferSettings = transport.DEFAULT) -> Runtime:
    """Make the bundle named by the environment available locally and return where it is.

    Reads MODEL_BACKEND (pytorch|onnx), MODEL_BUNDLE_S3_URI_PYTORCH / _ONNX (s3:// or file://,
    pointing at `.../bundle.tar.gz`), REGISTRY_RUNTIME_DIR (default data/models/registry_runtime)
    and REGISTRY_VERIFY (stat|full); KILN_EXTRACT_MAX_BYTES / _FILES / _RATIO bound what the
    bundle may unpack to (artifacts.extract_limits). `progress` receives downloaded byte counts.
    Raises KilnError (PublishError for transfer and verification failures) and leaves `current`
    untouched then.
    """
    env = os.environ if env is None else env
    backend = (env.get("MODEL_BACKEND") or "").strip().lower()
    if backend not in BACKENDS:
        raise KilnError(f"MODEL_BACKEND={backend!r}: set it to one of {', '.join(BACKENDS)}")
    uri = (env.get(URI_ENV[backend]) or "").strip()
    if not uri:
        raise KilnError(f"{URI_ENV[backend]} is not set; point it at the published "
                        f".../{backend}/{mf.ARCHIVE} (s3:// or file://)")
    if uri.endswith("/"):
        uri += mf.ARCHIVE
    if transport.scheme_of(uri) not in ("s3", "file"):
        raise KilnError(f"{URI_ENV[backend]}={uri}: only s3:// and file:// are supported")
    mode = (verify or env.get("REGISTRY_VERIFY") or "stat").strip().lower()
    if mode not in ("stat", "full"):
        raise KilnError(f"REGISTRY_VERIFY={mode!r}: use 'stat' (default) or 'full'")
    limits = Limits.from_env(env)  # the host's ceilings, refused here if set to nonsense
    policy = signing.policy_from_env(env)  # REGISTRY_TRUSTED_KEYS: signed bundles only
    root = Path(env.get("REGISTRY_RUNTIME_DIR") or DEFAULT_RUNTIME_DIR).expanduser().absolute()
    base = root / backend
    try:
        with _locked(base):
            return _bootstrap(backend, uri, base, mode == "full", progress, settings, limits,
                              policy, env)
    except OSError as exc:  # the runtime dir (or a file in it) cannot be read or written
        raise PublishError(f"{exc.filename or base}: {exc.strerror or exc}; check "
                           "REGISTRY_RUNTIME_DIR, its permissions and free space, then run the "
                           "bootstrap again (current still points at the previous version)"
                           ) from None


def _bootstrap(backend: str, uri: str, base: Path, full: bool, progress: transport.Progress | None,
               settings: transport.TransferSettings, limits: Limits,
               policy: signing.Policy, env: Mapping[str, str] | None = None) -> Runtime:
    manifest_uri = transport.sibling(uri, mf.MANIFEST)
    raw = transport.read_small(manifest_uri, settings=settings)
    if raw is None:
        raise PublishError(f"{manifest_uri}: not found, so {uri} is not a published bundle (or its "
                           "publish was interrupted); publish it with `kiln publish`")
    published = mf.loads_published(raw, manifest_uri)
    if policy.required:  # before any download, cache use or extraction: the manifest is signed,
        # so the archive size/sha256 and file digests checked below are the signed ones
        sig_uri = transport.sibling(uri, names.SIGNATURE)
        sig = transport.read_small(sig_uri, limit=signing.MAX_SIGNATURE_BYTES, settings=settings)
        signing.check_published(raw, sig, policy, origin=sig_uri, manifest_origin=manifest_uri)
    size, sha = published["archive"]["size"], published["archive"]["sha256"]
    if published["backend"] != backend:
        raise KilnError(f"{manifest_uri}: a {published['backend']!r} bundle, but "
                        f"MODEL_BACKEND={backend}; point {URI_ENV[backend]} at the {backend} "
                        "bundle")
    version = published["version"]
    if not _VERSION.fullmatch(version):
        shown = repr(version[:60]) + ("..." if len(version) > 60 else "")
        raise PublishError(f"{manifest_uri}: version {shown} ({len(version)} characters) is not "
                           "a usable version name (up to 128 letters, digits, '.', '_', '+', '-', "
                           "starting with a letter or digit); re-publish it under a plain version")
    vid = f"{version}-{sha[:12]}"
    versions = base / "versions"
    vdir, record = versions / vid, versions / (vid + RECORD_SUFFIX)

    downloaded = False
    if not _cached(vdir, record, sha, published, full):
        _install(uri, published, size, sha, vdir, record, progress, settings, limits)
        downloaded = True
    paths = resolve_paths(vdir, backend)
    engine = None
    if backend == "tensorrt":  # an engine only where its key matches this host, else ONNX
        choice = engines.choose(vdir, env=env)
        engine = choice.as_json()
        if choice.path is not None:
            paths = {**paths, "REGISTRY_TRT_ENGINE_PATH": str(choice.path)}
    _point_current(base, vid)
    return Runtime(backend=backend, version=version, directory=vdir, archive_sha256=sha,
                   downloaded=downloaded, paths=paths, engine=engine)


def _cached(vdir: Path, record: Path, sha: str, published: mf.PublishedManifest,
            full: bool) -> bool:
    """Is `vdir` the verified unpacking of this archive, untouched since? (see module doc)"""
    try:
        seen = json.loads(record.read_bytes())
    except (OSError, ValueError):
        return False
    if not isinstance(seen, dict) or seen.get("archive_sha256") != sha:
        return False
    if _stat_tree(vdir) != seen.get("files"):
        return False
    if full:
        inner = mf.without_archive(published)
        try:
            on_disk = mf.load(vdir / mf.MANIFEST)
        except KilnError:
            return False
        return on_disk == inner and not mf.compare_tree(vdir, inner)
    return True


def _stat_tree(root: Path) -> dict[str, list[int]] | None:
    """{relative path: [size, mtime_ns, inode]} of every file; None if anything is not regular."""
    out: dict[str, list[int]] = {}
    if not root.is_dir() or root.is_symlink():
        return None
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            if os.path.islink(os.path.join(dirpath, name)):
                return None
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if not os.path.isfile(path) or os.path.islink(path):
                return None
            out[os.path.relpath(path, root).replace(os.sep, "/")] = [
                st.st_size, st.st_mtime_ns, st.st_ino]
    return out


def _install(uri: str, published: mf.PublishedManifest, size: int, sha: str, vdir: Path,
             record: Path,
             progress: transport.Progress | None, settings: transport.TransferSettings,
             limits: Limits) -> None:
    """Download, check, unpack and verify into a hidden directory, then rename it into place."""
    versions = vdir.parent
    versions.mkdir(parents=True, exist_ok=True)
    _sweep(versions)
    work = Path(tempfile.mkdtemp(prefix=f".{vdir.name}.", suffix=".tmp", dir=versions))
    try:
        tarball, tree = work / mf.ARCHIVE, work / "tree"
        transport.download(uri, tarball, size=size, sha256=sha, progress=progress, settings=settings)
        unpack_checked(tarball, tree, published, limits=limits,
                       fix=f"the bundle at {uri} was replaced or mis-published, refusing it")
        tarball.unlink()
        resolve_paths(tree, published["backend"])  # refuse a bundle the app cannot use
        stats = _stat_tree(tree)
        record.unlink(missing_ok=True)  # the old record must never vouch for a new directory
        if vdir.exists() or vdir.is_symlink():  # there but unverified or damaged: set it aside
            os.replace(vdir, work / "damaged")
        os.replace(tree, vdir)
        fsync_dir(versions)
        write_bytes(record, canonical_json({"archive_sha256": sha, "files": stats,
                                            "version": published["version"]}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def resolve_paths(root: Path, backend: str) -> dict[str, str]:
    """REGISTRY_* paths inside an unpacked bundle; KilnError naming what a backend lacks."""
    paths: dict[str, str] = {}
    missing: list[str] = []

    def need(var: str, rel: str, is_dir: bool = False) -> None:
        p = root / rel
        if (p.is_dir() if is_dir else p.is_file()):
            paths[var] = str(p)
        else:
            missing.append(rel + ("/" if is_dir else ""))

    if backend == "pytorch" or (root / names.CONFIG).is_file():
        need("REGISTRY_MODEL_DIR", names.CONFIG)
        if "REGISTRY_MODEL_DIR" in paths:
            paths["REGISTRY_MODEL_DIR"] = str(root)
            if not any(root.glob("*.safetensors")) and not any(root.glob("pytorch_model*.bin")):
                missing.append(names.WEIGHTS)
    if backend in ("onnx", "tensorrt"):  # tensorrt: the fallback where no engine matches
        need("REGISTRY_ONNX_MODEL_PATH", ONNX_MODEL)
    need("REGISTRY_TOKENIZER_PATH", "tokenizer", is_dir=True)
    need("REGISTRY_THRESHOLDS_PATH", names.THRESHOLDS)
    need("REGISTRY_LABEL_FIELDS_PATH", names.LABEL_FIELDS)
    if (root / names.LABEL_ORDER).is_file():
        paths["REGISTRY_LABEL_ORDER_PATH"] = str(root / names.LABEL_ORDER)
    if missing:
        raise KilnError(f"{root}: the {backend} bundle lacks {', '.join(missing)}; rebuild it "
                        f"with `kiln build` and publish a new version")
    return dict(sorted(paths.items()))


def _point_current(base: Path, vid: str) -> None:
    """Point `current` at versions/<vid>; on a switch, prune all versions but the new one and
    the one it replaced (running workers, quick rollback)."""
    previous = swap_symlink(base / "current", f"versions/{vid}")
    if previous == f"versions/{vid}":
        return  # nothing switched: keep what the last switch kept (current and its predecessor)
    _prune(base / "versions", {vid} | ({Path(previous).name} if previous else set()))


def _prune(versions: Path, keep: set[str]) -> None:
    """Remove versions other than `keep` (their record first, so none is trusted half-deleted)."""
    for entry in sorted(versions.iterdir()):
        if entry.name.startswith(".") or entry.name.endswith(RECORD_SUFFIX):
            continue
        if entry.name not in keep:
            (versions / (entry.name + RECORD_SUFFIX)).unlink(missing_ok=True)
            shutil.rmtree(entry, ignore_errors=True)
    for rec in versions.glob("*" + RECORD_SUFFIX):
        if not (versions / rec.name[: -len(RECORD_SUFFIX)]).exists():
            rec.unlink(missing_ok=True)


def _sweep(versions: Path) -> None:
    """Remove work directories a killed bootstrap left (we hold the lock, so none is live)."""
    for entry in versions.iterdir():
        if entry.name.startswith(".") and entry.name.endswith(".tmp"):
            shutil.rmtree(entry, ignore_errors=True)


@contextmanager
def _locked(base: Path) -> Iterator[None]:
    """One bootstrap per runtime dir at a time: workers started together queue, then hit cache."""
    base.mkdir(parents=True, exist_ok=True)
    with FileLock(base / ".lock").held():
        yield
