"""Build provenance: an in-toto Statement v1 with a SLSA Provenance v1 predicate, per bundle.

    subject:  bundle.tar.gz and manifest.json, by sha256
    predicate.buildDefinition:
      buildType            urn:modelkiln:build-type:bundle:v1
      externalParameters   the spec (name, version, backend, spec digest), the source revision
      internalParameters   tool versions recorded in the manifest (torch, transformers, ...)
      resolvedDependencies every build input by sha256, and the git commit (gitCommit digest)
    predicate.runDetails:
      builder              id ($KILN_BUILDER_ID, else a local-builder URN), modelkiln + Python
      metadata             invocationId ($KILN_INVOCATION_ID, e.g. a CI run URL) when set

Everything is read from the published manifest the build wrote (inputs, spec digest, tools), so
provenance describes the bytes being shipped, not a later state of the tree. The source revision
is git HEAD of the project at signing time, with a `dirty` annotation when the work tree has
changes. No timestamps: the statement, like the bundle, is the same bytes when made again, and
a re-publish of an unchanged bundle therefore sends nothing new.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..artifacts import names
from ..artifacts.manifest import BundleManifest
from ..errors import SignatureError
from .statement import STATEMENT_TYPE, SignedBundle

SLSA_PREDICATE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "urn:modelkiln:build-type:bundle:v1"
LOCAL_BUILDER = "urn:modelkiln:builder:local"
BUILDER_ENV = "KILN_BUILDER_ID"
INVOCATION_ENV = "KILN_INVOCATION_ID"


@dataclass(frozen=True)
class Source:
    """The git revision a bundle was signed from."""

    commit: str
    uri: str
    dirty: bool


@dataclass(frozen=True)
class Provenance:
    """The parts of a verified provenance statement a reader acts on."""

    builder_id: str
    spec_digest: str
    source_commit: str | None
    inputs: tuple[tuple[str, str], ...]
    tools: tuple[tuple[str, str], ...]


def git_source(root: Path) -> Source | None:
    """HEAD of the git checkout holding `root`, its origin URL and whether it has changes."""
    from ..proc import run  # only signers run git: the bootstrap's import stays light

    head = run(["git", "rev-parse", "HEAD"], cwd=root, check=False, timeout=10)
    if head.returncode != 0:
        return None
    remote = run(["git", "config", "--get", "remote.origin.url"], cwd=root, check=False,
                 timeout=10).stdout.strip()
    status = run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                 check=False, timeout=30)
    uri = f"git+{remote}" if remote else f"git+{Path(root).resolve().as_uri()}"
    return Source(head.stdout.strip(), uri, bool(status.stdout.strip()))


def statement(manifest: BundleManifest, record: SignedBundle, source: Source | None,
              env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The SLSA v1 provenance statement for one published bundle (see the module doc)."""
    import platform

    env = os.environ if env is None else env
    inputs = manifest.get("inputs") or {}
    deps: list[dict[str, Any]] = [{"name": str(k), "digest": {"sha256": str(v)}}
                                  for k, v in sorted(inputs.items())]
    external: dict[str, Any] = {"spec": {"name": record.name, "version": record.version,
                                         "backend": record.backend,
                                         "digest": {"sha256": str(manifest.get("spec_digest"))}}}
    if source is not None:
        deps.append({"uri": source.uri, "digest": {"gitCommit": source.commit},
                     "annotations": {"dirty": source.dirty}})
        external["source"] = {"uri": source.uri, "digest": {"gitCommit": source.commit}}
    run_details: dict[str, Any] = {"builder": {
        "id": env.get(BUILDER_ENV) or LOCAL_BUILDER,
        "version": {"modelkiln": __version__, "python": platform.python_version()}}}
    if env.get(INVOCATION_ENV):
        run_details["metadata"] = {"invocationId": env[INVOCATION_ENV]}
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": names.ARCHIVE, "digest": {"sha256": record.archive_sha256}},
                    {"name": names.MANIFEST, "digest": {"sha256": record.manifest_sha256}}],
        "predicateType": SLSA_PREDICATE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": external,
                "internalParameters": {"tools": dict(sorted((manifest.get("tools") or {})
                                                            .items()))},
                "resolvedDependencies": deps,
            },
            "runDetails": run_details,
        },
    }


def decode(doc: Any, record: SignedBundle, origin: str) -> Provenance:
    """Check a verified provenance statement is about `record`'s bytes; return what it says."""
    def bad(what: str) -> SignatureError:
        return SignatureError(f"{origin}: the provenance {what}; re-sign the bundle with "
                              "`kiln sign`")

    if not isinstance(doc, dict) or doc.get("_type") != STATEMENT_TYPE \
            or doc.get("predicateType") != SLSA_PREDICATE:
        raise bad(f"is not an in-toto statement with a {SLSA_PREDICATE} predicate")
    subjects = {s.get("name"): (s.get("digest") or {}).get("sha256")
                for s in doc.get("subject") or [] if isinstance(s, dict)}
    want = {names.ARCHIVE: record.archive_sha256, names.MANIFEST: record.manifest_sha256}
    if subjects != want:
        raise bad(f"is about other bytes (subjects {subjects}), not {record.label}")
    try:
        build = doc["predicate"]["buildDefinition"]
        spec_digest = build["externalParameters"]["spec"]["digest"]["sha256"]
        builder_id = doc["predicate"]["runDetails"]["builder"]["id"]
        deps = build["resolvedDependencies"]
        tools = build["internalParameters"]["tools"]
        inputs = tuple((d["name"], d["digest"]["sha256"]) for d in deps if "sha256" in d["digest"])
        commits = [d["digest"]["gitCommit"] for d in deps if "gitCommit" in d["digest"]]
    except (KeyError, TypeError, AttributeError):
        raise bad("lacks buildDefinition or runDetails fields") from None
    return Provenance(builder_id=str(builder_id), spec_digest=str(spec_digest),
                      source_commit=str(commits[0]) if commits else None,
                      inputs=inputs, tools=tuple(sorted((str(k), str(v))
                                                        for k, v in tools.items())))
