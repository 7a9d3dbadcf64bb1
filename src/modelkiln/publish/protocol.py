"""The one publish protocol, written once for every Location (an s3:// prefix, a directory).

What serving hosts read is unchanged: `<prefix>/bundle.tar.gz` and `<prefix>/manifest.json`, the
manifest being the commit point (a prefix with a manifest is published; its `archive` entry names
the tarball's size and sha256). Publishing writes content first and the manifest last:

1. Read the manifest. With our archive sha256 the version is published: nothing is written,
   except putting back a lost or damaged tarball (the same bytes). With another sha256:
   ConflictError (exit 5), unless `force`.
2. Claim the version: write `.publish-claim.json` (our archive sha256) only if absent. A claim
   naming other bytes: VersionClaimed (exit 5), and nothing was written. A claim naming ours is
   a concurrent publisher of the same bytes, or our own killed run: carry on beside it.
3. Read the manifest again: a publisher that committed and released its claim between 1 and 2
   has won; go back to 1's verdict (and drop the claim just made).
4. Tarball: kept if it already holds our bytes (an interrupted run got this far), else written,
   only if absent or over exactly the leftover seen.
5. Commit: the manifest, only if absent. Then check the tarball is still the one written.
6. Release the claim.

Why racing publishers cannot mismatch the pair: only the claim's holder and publishers of the
very same bytes ever write the tarball, and a claim is released only after its manifest is
committed, from when on every publisher stops at 1 or 3. The conditional tarball write of 4
alone cannot do this (a publisher replacing what looks like an uncommitted leftover may replace
another's tarball just before that one commits), and neither can the conditional manifest.

Why a claim rather than a content-addressed tarball key: serving hosts and their bootstraps read
`bundle.tar.gz` beside `manifest.json`; a claim keeps that layout byte for byte, and is gone
once a publish finishes. A publisher killed between 2 and 5 leaves its claim: re-running it
finishes the publish; publishers of other bytes are refused until then, or take the version
with `--force`. `--force` (claim, un-commit, replace, commit) is an operator's override and
must not race other publishers of the same version.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from ..artifacts import names
from ..artifacts.digest import canonical_json
from ..errors import ConflictError, PublishError
from ..transport import (
    ALWAYS,
    IF_ABSENT,
    Condition,
    Location,
    ObjectInfo,
    PreconditionFailed,
    if_match,
)
from .bundle import DistBundle, Progress, PublishResult, existing_archive_sha

CLAIM = ".publish-claim.json"
CLAIM_KIND = "modelkiln/publish-claim"
CLAIM_ATTEMPTS = 5


class VersionClaimed(ConflictError):
    """Another publisher (running, or killed before its commit) claimed this version first."""

    def __init__(self, location: str, existing: str, new: str):
        super().__init__(location, existing, new)
        self.args = (f"{location}: this version is being published with sha256 {existing} by "
                     f"another publisher (or one that was interrupted); refusing {new}. Bump the "
                     "version in the spec; if that other publish was killed, re-run it to "
                     "finish, or pass --force to take the version",)


@dataclass
class _Run:
    """One publish in progress: where, what, and what it has written so far."""

    place: Location
    bundle: DistBundle
    progress: Progress | None
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    sent: int = 0
    archive_etag: str = ""

    def result(self, **extra: object) -> PublishResult:
        b, p = self.bundle, self.place
        base = PublishResult(destination=p.base_uri, archive_uri=p.uri(names.ARCHIVE),
                             manifest_uri=p.uri(names.MANIFEST), name=b.name, version=b.version,
                             backend=b.backend, archive_sha256=b.sha256,
                             uploaded=tuple(self.uploaded), skipped=tuple(self.skipped),
                             bytes_uploaded=self.sent)
        return dataclasses.replace(base, **extra)  # type: ignore[arg-type]


def publish(bundle: DistBundle, place: Location, *, force: bool = False,
            progress: Progress | None = None) -> PublishResult:
    """Publish `bundle` at `place`; see the module doc. ConflictError (exit 5) for other bytes."""
    place.clean_stale()
    run = _Run(place, bundle, progress)
    existing = _manifest_sha(place)
    if existing == bundle.sha256:
        return _published(run)
    if force:
        return _force(run, existing)
    if existing is not None:
        raise ConflictError(place.uri(names.MANIFEST), existing, bundle.sha256)
    created = _claim(run)
    existing = _manifest_sha(place)
    if existing is None:
        return _first(run)
    if existing != bundle.sha256:
        if created:  # safe: with a manifest committed, no claim guards anything any more
            place.delete(CLAIM)
        raise ConflictError(place.uri(names.MANIFEST), existing, bundle.sha256)
    return _published(run)


def _manifest_sha(place: Location) -> str | None:
    raw = place.get_small(names.MANIFEST)
    return None if raw is None else existing_archive_sha(raw, place.uri(names.MANIFEST))


def _claim_bytes(bundle: DistBundle) -> bytes:
    """Deterministic, so every publisher of the same bytes writes the very same claim."""
    return canonical_json({"kind": CLAIM_KIND, "archive_sha256": bundle.sha256,
                           "size": bundle.size, "name": bundle.name, "version": bundle.version,
                           "backend": bundle.backend})


def _claim_sha(raw: bytes) -> str:
    """The archive sha256 a claim names ('<unreadable>' for anything else: never ours)."""
    try:
        value = json.loads(raw)
    except ValueError:
        return "<unreadable>"
    sha = value.get("archive_sha256") if isinstance(value, dict) else None
    return sha if isinstance(sha, str) else "<unreadable>"


def _claim(run: _Run) -> bool:
    """Claim the version for our bytes; True if we created the claim, False if we share it."""
    place, sha = run.place, run.bundle.sha256
    for _ in range(CLAIM_ATTEMPTS):
        try:
            place.put_bytes(CLAIM, _claim_bytes(run.bundle), IF_ABSENT)
            return True
        except PreconditionFailed:
            pass
        raw = place.get_small(CLAIM)
        if raw is None:
            continue  # released (its publish committed) between our write and our read
        other = _claim_sha(raw)
        if other == sha:
            return False
        raise VersionClaimed(place.uri(CLAIM), other, sha)
    raise PublishError(f"{place.uri(CLAIM)}: claimed and released {CLAIM_ATTEMPTS} times while "
                       "this publish tried to claim it; run the command again")


def _published(run: _Run) -> PublishResult:
    """The manifest names our bytes: make sure the tarball does too; write nothing else."""
    place, b = run.place, run.bundle
    seen = place.head(names.ARCHIVE)
    if seen is not None and place.holds(names.ARCHIVE, b.size, b.sha256):
        run.skipped += [names.ARCHIVE, names.MANIFEST]
        signed = _put_signatures(run)  # a re-sign (new key) of a published version adds only these
        _drop_own_claim(run)
        return run.result(unchanged=not signed)
    _put_archive(run, seen, None)  # lost or damaged under our manifest: the same bytes back
    _put_signatures(run)
    run.skipped.append(names.MANIFEST)
    _drop_own_claim(run)
    return run.result()


def _drop_own_claim(run: _Run) -> None:
    """Remove a claim of our bytes that a run killed after its commit left behind."""
    raw = run.place.get_small(CLAIM)
    if raw is not None and _claim_sha(raw) == run.bundle.sha256:
        run.place.delete(CLAIM)


def _first(run: _Run) -> PublishResult:
    """We hold (or share) the claim and nothing is committed: tarball, manifest, release."""
    place, b = run.place, run.bundle
    seen = place.head(names.ARCHIVE)
    if seen is not None and place.holds(names.ARCHIVE, b.size, b.sha256):
        run.skipped.append(names.ARCHIVE)  # an interrupted run of these same bytes got this far
        run.archive_etag = seen.etag
    else:
        _put_archive(run, seen, None)
    _put_signatures(run)
    _commit(run, IF_ABSENT)
    place.delete(CLAIM)
    return run.result()


def _force(run: _Run, replaced: str | None) -> PublishResult:
    """Take the version on purpose: claim, un-commit, replace the tarball, commit, release."""
    place = run.place
    place.put_bytes(CLAIM, _claim_bytes(run.bundle), ALWAYS)
    if replaced is not None:
        place.delete(names.MANIFEST)  # un-commit first: readers see "not published", no mismatch
    _put_archive(run, place.head(names.ARCHIVE), ALWAYS)
    _put_signatures(run)
    _commit(run, ALWAYS)
    place.delete(CLAIM)
    return run.result(forced=replaced is not None, replaced=replaced)


def _put_archive(run: _Run, seen: ObjectInfo | None, condition: Condition | None) -> None:
    """Write the tarball: if absent, or over exactly the leftover `seen` (or as `condition`)."""
    place, b = run.place, run.bundle
    if condition is None:
        condition = IF_ABSENT if seen is None else if_match(seen.etag)
    try:
        written = place.upload_file(names.ARCHIVE, b.archive, size=b.size, sha256=b.sha256,
                                    condition=condition, progress=run.progress,
                                    content_type="application/gzip")
    except PreconditionFailed:
        now = place.head(names.ARCHIVE)  # a publisher of the same bytes wrote it first: fine
        if now is None or not place.holds(names.ARCHIVE, b.size, b.sha256):
            raise
        run.archive_etag = now.etag
        return
    run.archive_etag = written.etag
    run.uploaded.append(names.ARCHIVE)
    run.sent += b.size


def _put_signatures(run: _Run) -> bool:
    """Write the signature files (before the manifest) where they differ from what is there.

    Deterministic signing makes the same key's files byte-identical, so an unchanged publish
    writes none; every version of them is valid for the one manifest, so replacing is safe.
    """
    wrote = False
    for sidecar in run.bundle.signatures:
        if run.place.get_small(sidecar.name) == sidecar.data:
            run.skipped.append(sidecar.name)
            continue
        run.place.put_bytes(sidecar.name, sidecar.data, ALWAYS, content_type=sidecar.media_type)
        run.uploaded.append(sidecar.name)
        run.sent += len(sidecar.data)
        wrote = True
    return wrote


def _commit(run: _Run, condition: Condition) -> None:
    """Write the manifest last, then check the tarball under it is still the one we checked."""
    place, b = run.place, run.bundle
    try:
        place.put_bytes(names.MANIFEST, b.manifest_bytes, condition)
    except PreconditionFailed:
        other = _manifest_sha(place)
        if other != b.sha256:
            raise ConflictError(place.uri(names.MANIFEST), other or "<none>", b.sha256) from None
    run.uploaded.append(names.MANIFEST)
    run.sent += len(b.manifest_bytes)
    if run.progress:
        run.progress(len(b.manifest_bytes))
    now = place.head(names.ARCHIVE)
    if now is None or (now.etag != run.archive_etag
                       and not place.holds(names.ARCHIVE, b.size, b.sha256)):
        raise PublishError(f"{place.uri(names.ARCHIVE)}: changed while this publish committed (a "
                           "writer that bypasses kiln?); check the destination, then publish "
                           "again with --force")
