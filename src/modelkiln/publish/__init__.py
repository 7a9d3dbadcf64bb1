"""Publishing built bundles: content first, one small commit point (the manifest) last.

`publish_bundle` sends `dist/<name>/<version>/<backend>/{bundle.tar.gz, manifest.json}` to an
s3:// prefix or a local directory (file:// or a plain path) through one protocol
(`protocol.py`) with the same guarantees everywhere: the manifest is written only after the
tarball is complete, a published version is immutable (different bytes raise ConflictError
unless force=True), racing publishers leave one winner whose tarball and manifest belong
together, and publishing the same bytes again writes nothing. boto3 is imported only for s3://.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from ..artifacts.digest import StatCache
from ..errors import KilnError
from ..transport import DEFAULT, TransferSettings, open_location
from ..transport.schemes import schemes, supports
from .bundle import DistBundle, PublishResult
from .protocol import publish

__all__ = ["DistBundle", "PublishResult", "TransferSettings", "publish", "publish_bundle",
           "render_destination"]

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def render_destination(template: str, *, name: str, version: str, backend: str) -> str:
    """Fill {name}, {version} and {backend} in a destination template; end it with '/'.

    Unknown placeholders are an error rather than left in place, so a typo cannot publish to a
    literal `{verison}` prefix.
    """
    values = {"name": name, "version": version, "backend": backend}

    def fill(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise KilnError(f"{template}: unknown placeholder {{{key}}} in the publish "
                            "destination; use {name}, {version} or {backend}")
        return values[key]

    rendered = _PLACEHOLDER.sub(fill, template)
    return rendered if rendered.endswith("/") else rendered + "/"


def publish_bundle(dist_dir: Path, destination: str, *, force: bool = False,
                   progress: Callable[[int], None] | None = None,
                   cache: StatCache | None = None,
                   settings: TransferSettings | None = None) -> PublishResult:
    """Publish one built backend bundle to `destination` (s3://bucket/prefix/, file:// or a path).

    `progress` receives byte counts as content is written (it may receive a negative count when
    a part is retried). `cache` lets an unchanged tarball skip re-hashing; `settings` tunes S3
    transfers (part size, concurrency, retries, checksum). Raises ConflictError
    (exit 5) for different bytes under a published version, PublishError for transfer failures.
    """
    if not supports(destination):  # s3://, file://, a path, or an installed transport's scheme
        raise KilnError(f"{destination}: unsupported publish destination; use "
                        "s3://bucket/prefix/, file:///absolute/path/, a directory path or the "
                        f"scheme of an installed transport ({', '.join(schemes())}; "
                        "`kiln plugins` lists them)")
    bundle = DistBundle.load(Path(dist_dir), cache)
    place = open_location(destination, settings or DEFAULT)
    return publish(bundle, place, force=force, progress=progress)
