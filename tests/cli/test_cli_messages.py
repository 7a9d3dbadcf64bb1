"""Messages as a person reads them: `kiln validate` reports every healthy spec and then the
problems of the broken one, `plan --changed-since` prints nothing when nothing changed, a
`verify-signature --version` refusal says what was asked for, a drift hint names the entry."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from distfactory import make_dist
from helpers import BIN, SPEC, Project, make_project
from modelkiln import signing
from modelkiln.errors import DriftError


def kiln(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(BIN / "kiln"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "KILN_CACHE_URI": "off"})
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    return done


@pytest.fixture
def project(tmp_path: Path, tiny_inputs: Path) -> Project:
    return make_project(tmp_path / "proj", tiny_inputs)


def test_validate_prints_ok_for_every_healthy_spec_then_the_problems(project: Project) -> None:
    spec = SPEC.format(name="tiny").replace("name: tiny", "name: broken").replace(
        'version: "1.0.0"', "version: 1")
    (project.root / "bundles" / "broken.yaml").write_text(spec)
    done = kiln("validate", cwd=project.root)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "ok  tiny.yaml: tiny 1.0.0 (pytorch)\n"
    assert done.stderr.splitlines() == [
        "kiln: 1 problem found:",
        "bundles/broken.yaml:5:10: version: expected string, got 1 (put the value in quotes to "
        "keep it as text)"]
    done = kiln("validate", "--json", cwd=project.root)
    assert done.returncode == 3, done.stderr
    assert [(r["name"], r["ok"], len(r["problems"])) for r in json.loads(done.stdout)] == [
        ("tiny", True, 0), ("broken", False, 1)]


def test_changed_since_with_nothing_changed_prints_nothing(project: Project) -> None:
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "init"]):
        subprocess.run([*git, *cmd], cwd=project.root, check=True)
    done = kiln("plan", "--changed-since", "HEAD", cwd=project.root)
    assert (done.returncode, done.stdout) == (0, ""), done.stderr
    assert done.stderr == "kiln: no bundle changed since HEAD\n"
    done = kiln("plan", "--changed-since", "HEAD", "--json", cwd=project.root)
    assert (done.returncode, done.stdout) == (0, "[]\n")
    project.edit('version: "1.0.0"', 'version: "1.0.1"')
    done = kiln("plan", "--changed-since", "HEAD", cwd=project.root)
    assert (done.returncode, done.stdout, done.stderr) == (0, "tiny\n", "")


def test_verify_signature_says_which_version_was_asked_for(tmp_path: Path) -> None:
    private, public, _ = signing.generate(tmp_path / "keys", "publisher")
    dist = make_dist(tmp_path, version="3.0.0", weights=2_000)
    signing.sign_dist(dist, signing.load_signing_key({signing.KEY_FILE_ENV: str(private)}),
                      root=None)
    trusted = ("--trusted-keys", str(public))
    done = kiln("verify-signature", str(dist), *trusted, "--version", "2.0.0", cwd=tmp_path)
    assert done.returncode == 7, done.stderr
    assert "the signature is for registry-v3 3.0.0 (pytorch), but version '2.0.0' was asked " \
           "for" in done.stderr
    assert "this is version" not in done.stderr and len(done.stderr.splitlines()) == 1
    done = kiln("verify-signature", str(dist), *trusted, "--name", "other", cwd=tmp_path)
    assert done.returncode == 7 and "but name 'other' was asked for" in done.stderr
    done = kiln("verify-signature", str(dist), *trusted, "--version", "3.0.0", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("ok  registry-v3 3.0.0"), done.stderr
    done = kiln("verify-signature", str(dist), *trusted, "--json", cwd=tmp_path)
    report = json.loads(done.stdout)
    assert report["ok"] is True and report["bundle"].startswith("registry-v3 3.0.0")
    assert report["key_id"]


def test_the_default_drift_hint_names_the_entry() -> None:
    text = str(DriftError("triage-v1-pytorch", []))
    assert "`kiln registry lock triage-v1-pytorch --set-expected`" in text and "NAME" not in text
