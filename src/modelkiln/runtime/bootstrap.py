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

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import signing, transport
from ..artifacts import manifest as mf
from ..artifacts import names
from ..artifacts.extract_limits import Limits
from ..artifacts.install import refuse_too_many, unpack_checked
from ..backends import backends
from ..errors import KilnError, PublishError, SignatureError
from ..transport.schemes import schemes, supports
from . import engines
from .versions import (
    VERSION,
    Slot,
    full_verify,
    installing,
    is_cached,
    locked,
    point_current,
    runtime_base,
)


@dataclass(frozen=True)
class Runtime:
    """A verified, unpacked bundle and the paths a serving app needs from it."""

    backend: str
    version: str
    directory: Path
    archive_sha256: str
    downloaded: bool
    paths: Mapping[str, str] = field(default_factory=dict)
    engine: engines.EngineChoice | None = None  # tensorrt: the engine chosen (or not) and why

    def exports(self) -> dict[str, str]:
        """Environment variables for the serving app (what `kiln bootstrap` prints as exports)."""
        return {"MODEL_BACKEND": self.backend, "REGISTRY_MODEL_VERSION": self.version,
                **self.paths}

    def shell(self) -> str:
        """`export NAME='value'` lines for `eval "$(kiln bootstrap)"` (values shell-quoted)."""
        return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(self.exports().items()))

    def as_json(self) -> dict[str, Any]:
        """The machine-readable report (`kiln bootstrap --json`)."""
        return {"model_backend": self.backend, "model_version": self.version,
                "directory": str(self.directory), "archive_sha256": self.archive_sha256,
                "downloaded": self.downloaded, "exports": self.exports(),
                **({"tensorrt": self.engine.as_json()} if self.engine is not None else {})}


def bootstrap(env: Mapping[str, str] | None = None, progress: transport.Progress | None = None, *,
              verify: str | None = None,
              settings: transport.TransferSettings = transport.DEFAULT) -> Runtime:
    """Make the bundle named by the environment available locally and return where it is.

    Reads MODEL_BACKEND (pytorch|onnx), MODEL_BUNDLE_S3_URI_PYTORCH / _ONNX (s3:// or file://,
    pointing at `.../bundle.tar.gz`), REGISTRY_RUNTIME_DIR (default data/models/registry_runtime)
    and REGISTRY_VERIFY (stat|full); KILN_EXTRACT_MAX_BYTES / _FILES / _RATIO bound what the
    bundle may unpack to (artifacts.extract_limits). `progress` receives downloaded byte counts.
    Raises KilnError (PublishError for transfer and verification failures; with
    REGISTRY_TRUSTED_KEYS, SignatureError for a signature refused or bytes other than the signed
    ones) and leaves `current` untouched then.
    """
    env = os.environ if env is None else env
    backend = (env.get("MODEL_BACKEND") or "").strip().lower()
    installed = backends()
    if backend not in installed:
        raise KilnError(f"MODEL_BACKEND={backend!r}: set it to one of {', '.join(installed)}")
    uri_env = installed[backend].URI_ENV
    uri = (env.get(uri_env) or "").strip()
    if not uri:
        raise KilnError(f"{uri_env} is not set; point it at the published "
                        f".../{backend}/{mf.ARCHIVE} (s3:// or file://)")
    if uri.endswith("/"):
        uri += mf.ARCHIVE
    if not supports(uri):  # s3://, file:// or an installed transport's scheme
        more = [f"{s}://" for s in schemes() if s not in ("s3", "file")]
        raise KilnError(f"{uri_env}={uri}: only s3:// and file:// are supported"
                        + (f", and the installed transports' {', '.join(more)}" if more else ""))
    full = full_verify(verify, env)
    limits = Limits.from_env(env)  # the host's ceilings, refused here if set to nonsense
    policy = signing.policy_from_env(env)  # REGISTRY_TRUSTED_KEYS: signed bundles only
    base = runtime_base(env, backend)
    with locked(base):
        return _bootstrap(backend, uri, base, full, progress, settings, limits, policy, env)


def _bootstrap(backend: str, uri: str, base: Path, full: bool, progress: transport.Progress | None,
               settings: transport.TransferSettings, limits: Limits,
               policy: signing.Policy, env: Mapping[str, str] | None = None) -> Runtime:
    manifest_uri = transport.sibling(uri, mf.MANIFEST)
    raw = transport.read_small(manifest_uri, settings=settings)
    if raw is None:
        raise PublishError(f"{manifest_uri}: not found, so {uri} is not a published bundle (or its "
                           "publish was interrupted); publish it with `kiln publish`")
    published = mf.loads_published(raw, manifest_uri)
    record = None
    if policy.required:  # before any download, cache use or extraction: the manifest is signed,
        # so the archive size/sha256 and file digests checked below are the signed ones
        record = signing.check_published(raw, _signature(uri, settings), policy,
                                         origin=transport.sibling(uri, names.SIGNATURE),
                                         manifest_origin=manifest_uri)
    size, sha = published["archive"]["size"], published["archive"]["sha256"]
    if published["backend"] != backend:
        raise KilnError(f"{manifest_uri}: a {published['backend']!r} bundle, but "
                        f"MODEL_BACKEND={backend}; point {backends()[backend].URI_ENV} at the {backend} "
                        "bundle")
    version = published["version"]
    if not VERSION.fullmatch(version):
        shown = repr(version[:60]) + ("..." if len(version) > 60 else "")
        raise PublishError(f"{manifest_uri}: version {shown} ({len(version)} characters) is not "
                           "a usable version name (up to 128 letters, digits, '.', '_', '+', '-', "
                           "starting with a letter or digit); re-publish it under a plain version")
    slot = Slot.of(base, version, sha)
    downloaded = False
    if not is_cached(slot, sha, published, full):
        try:
            _install(uri, published, size, sha, slot, progress, settings, limits)
        except transport.DigestMismatch as exc:  # under a signed manifest: not the signed bytes
            if record is not None:
                signing.check_archive(record, exc.got, exc.actual or "", uri)
            raise
        downloaded = True
    paths = resolve_paths(slot.directory, backend)
    engine = None
    if backends()[backend].ENGINES:  # an engine only where its key matches this host, else ONNX
        engine = engines.choose(slot.directory, env=env)
        if engine.path is not None:
            paths = {**paths, "REGISTRY_TRT_ENGINE_PATH": str(engine.path)}
    point_current(base, slot.vid)
    return Runtime(backend=backend, version=version, directory=slot.directory,
                   archive_sha256=sha, downloaded=downloaded, paths=paths, engine=engine)


def _signature(uri: str, settings: transport.TransferSettings) -> bytes | None:
    """`bundle.sig` beside the tarball (None: absent); an oversized one is a refused signature."""
    sig_uri = transport.sibling(uri, names.SIGNATURE)
    try:
        return transport.read_small(sig_uri, limit=signing.MAX_SIGNATURE_BYTES, settings=settings,
                                    what="signature")
    except transport.TooLarge as exc:
        raise SignatureError(f"{sig_uri}: larger than {exc.limit} bytes, over the limit for a "
                             "signature; this is not a modelkiln signature, sign and publish "
                             "the bundle again") from None


def _install(uri: str, published: mf.PublishedManifest, size: int, sha: str, slot: Slot,
             progress: transport.Progress | None, settings: transport.TransferSettings,
             limits: Limits) -> None:
    """Download, check, unpack and verify into a work directory, then swap it into the slot."""
    refuse_too_many(published, limits, uri)  # from the manifest: before any download or write
    with installing(slot, sha, published["version"]) as staging:
        tarball = staging.work / mf.ARCHIVE
        transport.download(uri, tarball, size=size, sha256=sha, progress=progress, settings=settings)
        unpack_checked(tarball, staging.tree, published, limits=limits,
                       fix=f"the bundle at {uri} was replaced or mis-published, refusing it")
        tarball.unlink()
        resolve_paths(staging.tree, published["backend"])  # refuse a bundle the app cannot use


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

    about = backends().get(backend)  # what this backend's runtime exports (modelkiln.backends)
    if (about is not None and about.MODEL_DIR) or (root / names.CONFIG).is_file():
        need("REGISTRY_MODEL_DIR", names.CONFIG)
        if "REGISTRY_MODEL_DIR" in paths:
            paths["REGISTRY_MODEL_DIR"] = str(root)
            if not any(root.glob("*.safetensors")) and not any(root.glob("pytorch_model*.bin")):
                missing.append(names.WEIGHTS)
    for var, rel in about.EXPORTS if about is not None else ():
        need(var, rel)  # onnx, tensorrt (its fallback where no engine matches): the int8 model
    need("REGISTRY_TOKENIZER_PATH", names.TOKENIZER_DIR, is_dir=True)
    need("REGISTRY_THRESHOLDS_PATH", names.THRESHOLDS)
    need("REGISTRY_LABEL_FIELDS_PATH", names.LABEL_FIELDS)
    if (root / names.LABEL_ORDER).is_file():
        paths["REGISTRY_LABEL_ORDER_PATH"] = str(root / names.LABEL_ORDER)
    if missing:
        raise KilnError(f"{root}: the {backend} bundle lacks {', '.join(missing)}; rebuild it "
                        f"with `kiln build` and publish a new version")
    return dict(sorted(paths.items()))
