"""Signing test kit: key pairs made by `kiln keygen`'s function, real dist bundles packed by the
package stage's tarball writer and signed by modelkiln, and a way to run a command offline."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from distfactory import make_dist
from modelkiln import signing

OFFLINE_SITE = """\
import socket

def _refuse(*args, **kwargs):
    raise OSError("network disabled by the offline test harness")

socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
"""


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path
    key_id: str

    def signing_key(self) -> signing.SigningKey:
        return signing.load_signing_key({signing.KEY_FILE_ENV: str(self.private)})  # type: ignore[return-value]

    def trusted(self) -> tuple[signing.PublicKey, ...]:
        return signing.load_trusted_keys([self.public])


def signed_dist(root: Path, key: KeyPair, *, version: str = "3.0.0", seed: int = 0) -> Path:
    """A packed dist directory, signed (bundle.sig + provenance.sigstore.json)."""
    dist = make_dist(root, version=version, seed=seed, weights=20_000)
    signing.sign_dist(dist, key.signing_key(), root=None)
    return dist


def offline_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a Python subprocess that cannot open a network connection."""
    site = tmp_path / "offline-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(OFFLINE_SITE)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def offline_cmd(args: list[str]) -> list[str]:
    """Wrap a command in a fresh network namespace (loopback down, no routes) where allowed."""
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True, check=False) \
        if _has("unshare") else None
    return ["unshare", "-rn", *args] if probe is not None and probe.returncode == 0 else args


def _has(tool: str) -> bool:
    from shutil import which

    return which(tool) is not None


PYTHON = sys.executable
