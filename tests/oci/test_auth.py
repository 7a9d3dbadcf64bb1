"""Registry credentials: the docker config file (a broken entry is skipped, never a traceback) and
the answer to a 401 challenge (Basic from the config, Bearer from the realm's token endpoint)."""
from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from modelkiln.errors import PublishError
from modelkiln.transport.oci_auth import authorization, docker_credentials


def _config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, auths: object) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"auths": auths}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))


def test_docker_config_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = base64.b64encode(b"ann:s3cret").decode()
    _config(tmp_path, monkeypatch, {"https://reg.example:5000": {"auth": good},
                                    "bad.example": {"auth": "%%% not base64"},
                                    "tok.example": {"identitytoken": "abc"},
                                    "list.example": ["not", "an", "entry"]})
    assert docker_credentials("reg.example:5000") == ("ann", "s3cret")
    assert docker_credentials("tok.example") == ("<token>", "abc")
    assert docker_credentials("bad.example") is None
    assert docker_credentials("list.example") is None
    assert docker_credentials("other.example") is None
    _config(tmp_path, monkeypatch, ["auths", "is", "a", "list"])
    assert docker_credentials("reg.example:5000") is None


def test_basic_challenge_needs_credentials() -> None:
    assert authorization('Basic realm="r"', None, "s", "h", 5) is None
    header = authorization('Basic realm="r"', ("ann", "pw"), "s", "h", 5)
    assert header == "Basic " + base64.b64encode(b"ann:pw").decode()
    assert authorization("Negotiate", ("ann", "pw"), "s", "h", 5) is None


@pytest.fixture
def token_server() -> Iterator[tuple[str, list[dict[str, str]], list[bytes]]]:
    """A token endpoint on loopback answering the queued bodies in turn; it records each request's
    path and Authorization header."""
    seen: list[dict[str, str]] = []
    answers: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append({"path": self.path, "auth": self.headers.get("Authorization", "")})
            body = answers.pop(0)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/token", seen, answers
    server.shutdown()
    server.server_close()


def test_bearer_token_from_the_realm(token_server: tuple[str, list[dict[str, str]],
                                                           list[bytes]]) -> None:
    realm, seen, answers = token_server
    challenge = f'Bearer realm="{realm}",service="reg",scope="repository:m:pull"'
    answers += [b'{"token": "T1"}', b'{"access_token": "T2"}', b"<html>oops</html>"]
    assert authorization(challenge, None, "repository:m:pull", "h", 5) == "Bearer T1"
    assert seen[0]["path"] == "/token?service=reg&scope=repository%3Am%3Apull"
    assert seen[0]["auth"] == ""
    own = realm.split("/")[2]  # the realm is on the registry's own host: credentials go there
    assert authorization(challenge, ("ann", "pw"), "x", own, 5) == "Bearer T2"
    assert seen[1]["auth"].startswith("Basic ")
    with pytest.raises(PublishError, match="without a token"):
        authorization(challenge, None, "x", "h", 5)
