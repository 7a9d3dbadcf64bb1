"""Signing does not stale the build (issue 24 item 6).

`kiln sign` writes bundle.sig beside the package, and a signed `kiln publish` attaches the
signature to the OCI artifact as a referrer. Neither is part of what the build made: after
either, `kiln plan --check` exits 0 and says no task would run, and a second publish sends
nothing. The layout the image task built stays byte for byte what it built; the signed copy
publish pushes from sits beside it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import SPEC, Project, make_project
from modelkiln import signing
from modelkiln.artifacts.oci import referrers
from modelkiln.artifacts.oci.layout import OciLayout
from modelkiln.transport.oci import Registry
from ociregistry import DockerRegistry

pytestmark = pytest.mark.oci

OCI_SPEC = SPEC + """\
publish:
  oci: {host}/models/sign-stale:{{version}}-{{backend}}
"""


def plan_check(p: Project, **env: str) -> tuple[int, str]:
    import subprocess

    from helpers import BIN

    done = subprocess.run([str(BIN / "kiln"), "plan", "--check", "--cache", "off"], cwd=p.root,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env})
    return done.returncode, done.stdout + done.stderr


def test_sign_and_signed_publish_leave_the_build_up_to_date(
        tmp_path: Path, tiny_inputs: Path, oci_registry: DockerRegistry) -> None:
    spec = OCI_SPEC.replace("{host}", oci_registry.host)
    p = make_project(tmp_path / "p", tiny_inputs, spec=spec)
    built = p.kiln("build", "--cache", "off")
    assert built.returncode == 0, built.stderr
    code, out = plan_check(p)
    assert code == 0, out
    layout = p.root / "dist/tiny/1.0.0/oci/pytorch"
    index = (layout / "index.json").read_bytes()
    private, public, _ = signing.generate(tmp_path / "keys", "k")

    signed = p.kiln("sign", str(p.dist()), "--key", str(private))
    assert signed.returncode == 0, signed.stderr
    code, out = plan_check(p)
    assert code == 0, out  # before the fix: exit 6, "input dist/.../bundle.sig changed"
    assert "0 of " in out and "would run" in out

    env = {signing.KEY_FILE_ENV: str(private)}
    import subprocess

    from helpers import BIN

    pub = subprocess.run([str(BIN / "kiln"), "publish"], cwd=p.root, capture_output=True,
                         text=True, timeout=600, env={**os.environ, **env})
    assert pub.returncode == 0, pub.stderr
    assert "signed" in pub.stdout
    code, out = plan_check(p)
    assert code == 0, out  # before the fix: exit 6, "output .../index.json is corrupt"
    assert (layout / "index.json").read_bytes() == index  # what the image task built, unsigned
    subject = OciLayout(layout).find("model").digest
    reg = Registry(oci_registry.host)
    try:  # the signature went up beside the artifact it signs
        assert reg.manifest_digest("models/sign-stale", referrers.fallback_tag(subject))
    finally:
        reg.close()
    again = subprocess.run([str(BIN / "kiln"), "publish"], cwd=p.root, capture_output=True,
                           text=True, timeout=600, env={**os.environ, **env})
    assert again.returncode == 0, again.stderr
    assert "unchanged" in again.stdout
    assert plan_check(p)[0] == 0
    assert public.exists()
