"""`kiln store repair` tries every source it documents (the registry's S3 / file:// copy and dist
directory, this project's dist/ and published/) and reports each one it could not read, instead
of stopping at the first that fails (an S3 copy without credentials, a registry that cannot be read).

Real parts: the `kiln` CLI, a real store and registry, real dist tarballs, SeaweedFS for S3.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from distfactory import make_dist
from helpers import BIN
from modelkiln import registry as R
from modelkiln.publish import publish_bundle
from modelkiln.publish.store import publish_to_store
from store.store_helpers import AGENT

if TYPE_CHECKING:  # the root conftest's type; `import conftest` at run time finds another
    from conftest import S3Place

NAME, VERSION = "registry-v3-pytorch", "3.0.0"
WEIGHTS = "bundle/model.safetensors"
NO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_PROFILE": None,
                  "AWS_SESSION_TOKEN": None, "AWS_CONFIG_FILE": "/dev/null",
                  "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "AWS_EC2_METADATA_DISABLED": "true"}


def kiln(project: Path, *args: str, env: dict[str, str | None] | None = None
         ) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    done = subprocess.run([str(BIN / "kiln"), "store", "--store-root", str(project / "store"),
                           "repair", AGENT, "--registry-dir", str(project / "configs"), *args],
                          cwd=project, capture_output=True, text=True, timeout=120, env=full)
    assert "Traceback" not in done.stderr, done.stderr
    return done


@pytest.fixture
def project(tmp_path: Path, s3: S3Place) -> Path:
    """A project whose store version 3.0.0 is damaged; its tarball is on S3 (named by the
    registry) and in the project's dist/ (the test removes what it wants absent)."""
    root = tmp_path / "p"
    root.mkdir()
    (root / "pyproject.toml").write_text("")
    made = make_dist(tmp_path / "made", version=VERSION, seed=3)
    dist = root / "dist" / "registry-v3" / VERSION / "pytorch"
    shutil.copytree(made, dist)
    remote = publish_bundle(dist, s3.uri("registry-v3/3.0.0/pytorch/"))
    stored = publish_to_store(dist, root / "store", AGENT, VERSION, {})
    R.record_discovered(R.RegistryEntry(NAME, backend="pytorch", version=VERSION,
                                        artifacts=R.Artifacts(store=str(stored.path),
                                                              s3=remote.archive_uri)),
                        registry_dir=root / "configs")
    weights = stored.path / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-1] + b"!")
    return root


def test_s3_without_credentials_is_reported_and_dist_is_tried(project: Path, s3: S3Place) -> None:
    done = kiln(project, env=NO_CREDENTIALS)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"repaired {AGENT} {VERSION} from {project / 'dist'}"), done.stdout
    (skipped,) = [line for line in done.stderr.splitlines() if "skipped" in line]
    assert s3.uri("registry-v3/3.0.0/pytorch/bundle.tar.gz") in skipped, skipped
    assert "could not read" in skipped and "credentials" in skipped.lower(), skipped
    assert kiln(project).stdout.startswith(f"ok {AGENT} {VERSION}")


def test_an_unreadable_registry_is_reported_and_published_is_tried(project: Path) -> None:
    published = project / "published" / "registry-v3" / VERSION / "pytorch"
    published.parent.mkdir(parents=True)
    shutil.move(project / "dist" / "registry-v3" / VERSION / "pytorch", published)
    (project / "configs" / "model_registry.discovered.json").write_text("{not json")
    done = kiln(project)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"repaired {AGENT} {VERSION} from {published}"), done.stdout
    assert "registry" in done.stderr and "could not read" in done.stderr, done.stderr


def test_when_no_source_holds_it_each_is_named_with_its_reason(project: Path, s3: S3Place) -> None:
    shutil.rmtree(project / "dist")
    done = kiln(project, env=NO_CREDENTIALS)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    line = done.stderr
    assert f"{s3.uri('registry-v3/3.0.0/pytorch/bundle.tar.gz')} (could not read: " in line, line
    assert f"{project / 'dist'}" in line and f"{project / 'published'}" in line, line
    assert line.count("(absent)") == 2 and "--from PATH_OR_URI" in line, line


def test_the_s3_copy_is_used_when_it_can_be_read(project: Path) -> None:
    shutil.rmtree(project / "dist")
    done = kiln(project)
    assert done.returncode == 0, done.stderr
    assert " from s3://" in done.stdout and "skipped" not in done.stderr, (done.stdout, done.stderr)
