"""A file:// destination whose small files are not regular files (a FIFO where the manifest or
the signature belongs, a device) is refused in one line, never waited on: opening a FIFO for
reading blocks until a writer comes, which for a planted FIFO is forever. Before, the bootstrap
(file:// read_small) hung, and an oversized bundle.sig beside a registry entry's dist directory
was read whole and called "not a manifest"."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from distfactory import make_dist
from modelkiln.publish import publish_bundle


def _bootstrap(tmp_path: Path, uri: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "MODEL_BACKEND": "pytorch",
           "MODEL_BUNDLE_S3_URI_PYTORCH": uri, "REGISTRY_RUNTIME_DIR": str(tmp_path / "rt"),
           **extra}
    return subprocess.run([sys.executable, "-m", "modelkiln.cli", "bootstrap"], env=env,
                          capture_output=True, text=True, timeout=60)


def test_a_fifo_in_place_of_the_manifest_is_refused_not_waited_on(tmp_path: Path) -> None:
    dist = make_dist(tmp_path)
    uri = publish_bundle(dist, str(tmp_path / "bucket")).archive_uri
    manifest = tmp_path / "bucket" / "manifest.json"
    manifest.unlink()
    os.mkfifo(manifest)
    done = _bootstrap(tmp_path, uri)  # the timeout turns a hang into a failure
    assert done.returncode == 1, done.stderr
    assert "not a regular file" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "rt" / "pytorch" / "current").exists()


def test_a_device_in_place_of_the_manifest_is_over_the_limit(tmp_path: Path) -> None:
    dist = make_dist(tmp_path)
    uri = publish_bundle(dist, str(tmp_path / "bucket")).archive_uri
    manifest = tmp_path / "bucket" / "manifest.json"
    manifest.unlink()
    manifest.symlink_to("/dev/zero")
    done = _bootstrap(tmp_path, uri)
    assert done.returncode == 1 and "not a regular file" in done.stderr, done.stderr
