"""The OCI client against a hostile registry (hostile_registry.py): bootstrap and publish run in
a child process each, and every hostile answer must end in one `kiln:` line, within a bounded
time (the hang cases have a short REGISTRY_FETCH_TIMEOUT / KILN_OCI_TIMEOUT, and the child a
generous subprocess timeout so a regression fails instead of hanging), within bounded memory
(peak RSS of the child, by getrusage), with `current` left where it was and the docker config's
credentials sent to no other origin. A polite run first proves the harness serves both."""
from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from modelkiln.errors import KilnError, PublishError
from modelkiln.runtime import bootstrap
from modelkiln.transport.oci import Registry
from oci.hostile_registry import CASES, Case, Hostile, current, run_case, serve, setup, tls_drip

if TYPE_CHECKING:  # what pytest.param returns; pytest names the type only in _pytest
    from _pytest.mark import ParameterSet

SLACK_S = 60.0  # the child's subprocess timeout: generous, it only turns a hang into a failure
RSS_MIB = 128.0


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Hostile, dict[str, str],
                                                                        Path]]:
    root = tmp_path_factory.mktemp("hostile")
    for srv in serve():
        yield srv, setup(srv, root), root


def _cases(*names: str) -> list[ParameterSet]:
    return [pytest.param(c, id=c.name) for c in CASES if c.name.split(" ", 1)[1] in names]


def _run(hostile: tuple[Hostile, dict[str, str], Path], case: Case) -> None:
    srv, env, root = hostile
    got = run_case(srv, case, env, root, timeout=SLACK_S)
    assert got.outcome == case.expect, got.message
    assert got.wrong is None, got.wrong
    assert got.maxrss_mib < RSS_MIB, f"peak RSS {got.maxrss_mib:.0f} MiB"


@pytest.mark.parametrize("case", [pytest.param(Case("bootstrap polite", "bootstrap", None, "good",
                                                    "", "ok"), id="bootstrap"),
                                  pytest.param(Case("publish polite", "publish", None, "v1", "",
                                                    "ok"), id="publish")])
def test_the_polite_server_serves_bootstrap_and_publish(hostile: tuple[Hostile, dict[str, str],
                                                                       Path], case: Case) -> None:
    _run(hostile, case)


@pytest.mark.parametrize("case", _cases("huge-manifest", "endless-manifest", "huge-error",
                                        "endless-error", "token-huge", "token-endless"))
def test_a_huge_or_endless_reply_costs_a_few_mib(hostile: tuple[Hostile, dict[str, str], Path],
                                                  case: Case) -> None:
    """512 MiB or endless manifests, error bodies and token answers: read to a limit, refused."""
    _run(hostile, case)


@pytest.mark.parametrize("case", _cases("token-drip", "drip-headers", "drip-body", "drip-blob"))
def test_a_dripping_registry_is_given_up_on_at_the_deadline(
        hostile: tuple[Hostile, dict[str, str], Path], case: Case) -> None:
    """One byte every 0.5 s never trips a socket timeout; the deadline ends it, naming the
    variable that sets it, and `current` stays on the previous version."""
    _run(hostile, case)


@pytest.mark.parametrize("case", _cases("annotations-list", "layers-object", "layers-number",
                                        "layer-annotations-number", "layer-a-string",
                                        "top-level-list", "deep-nesting", "inner-deep"))
def test_a_hostile_manifest_is_one_kiln_line(hostile: tuple[Hostile, dict[str, str], Path],
                                             case: Case) -> None:
    _run(hostile, case)


@pytest.mark.parametrize("case", _cases("redirect-bad", "redirect-file", "realm-bad",
                                        "location-bad", "length-bad"))
def test_a_malformed_url_or_header_is_one_kiln_line(hostile: tuple[Hostile, dict[str, str],
                                                                   Path], case: Case) -> None:
    _run(hostile, case)


@pytest.mark.parametrize("case", _cases("clash", "dot-path"))
def test_clashing_layer_paths_blame_the_artifact(hostile: tuple[Hostile, dict[str, str], Path],
                                                 case: Case) -> None:
    """`zz` and `zz/x` (or `a` and `./a`) cannot both be files: the artifact is refused before
    anything is written, and the message does not send the operator to REGISTRY_RUNTIME_DIR."""
    _run(hostile, case)


@pytest.mark.parametrize("case", _cases("realm-other"))
def test_a_foreign_token_realm_gets_no_credentials(hostile: tuple[Hostile, dict[str, str], Path],
                                                   case: Case) -> None:
    """It is asked for an anonymous token instead (which this one grants)."""
    srv, _, _ = hostile
    _run(hostile, case)
    assert srv.other is not None and srv.other.seen, "the foreign realm was never asked"


def test_a_dripped_tls_handshake_ends_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The handshake happens before any request is sent, and must end by the request's
    deadline too. Run in a thread joined with a generous timeout, so a regression fails (the
    old 120 s socket timeout was the only bound), not hangs."""
    got: list[BaseException] = []
    monkeypatch.setenv("KILN_OCI_TIMEOUT", "2")

    def ping(host: str) -> None:
        reg = Registry(host, insecure=False)
        try:
            reg.ping()
        except BaseException as exc:
            got.append(exc)
        finally:
            reg.close()

    for host in tls_drip():
        worker = threading.Thread(target=ping, args=(host,), daemon=True)
        worker.start()
        worker.join(SLACK_S)
        assert not worker.is_alive(), f"no answer in {SLACK_S:g} s"
    assert len(got) == 1 and isinstance(got[0], PublishError), got
    assert "KILN_OCI_TIMEOUT" in str(got[0])


def _token_auth(srv: Hostile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                insecure: bool | None = None) -> str:
    """The Authorization header `srv`'s token endpoint got when a Registry for `srv.host`
    (holding docker-config credentials for it) answered its Bearer challenge."""
    secret = base64.b64encode(b"ann:s3cret").decode()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {srv.host: {"auth": secret}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    srv.fault, srv.seen[:] = "bearer", []
    reg = Registry(srv.host, insecure=insecure)
    try:
        reg.ping()
    finally:
        reg.close()
    return next(auth for _, path, auth in srv.seen if path.startswith("/token"))


def test_credentials_go_to_the_registrys_own_realm_over_tls_or_an_allowed_plain_host(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """127.0.0.1 may be spoken to over plain HTTP (loopback), so its own realm gets the Basic
    credentials; 127.0.0.2 (also loopback to the kernel, not on our list) is a host reached
    over plain HTTP only because the caller said so: its realm gets them only once
    KILN_OCI_INSECURE lists it."""
    for srv in serve():
        assert _token_auth(srv, tmp_path, monkeypatch).startswith("Basic ")
    for srv in serve("127.0.0.2"):
        assert _token_auth(srv, tmp_path, monkeypatch, insecure=True) == ""
        monkeypatch.setenv("KILN_OCI_INSECURE", srv.host)
        assert _token_auth(srv, tmp_path, monkeypatch).startswith("Basic ")


def test_a_listed_foreign_realm_gets_the_credentials(
        hostile: tuple[Hostile, dict[str, str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    srv, env, _ = hostile
    assert srv.other is not None
    monkeypatch.setenv("KILN_OCI_TOKEN_HOSTS", srv.other.host)
    monkeypatch.setenv("DOCKER_CONFIG", env["DOCKER_CONFIG"])
    srv.fault, srv.other.seen[:] = "realm-other", []
    try:
        reg = Registry(srv.host)
        reg.ping()
        reg.close()
    finally:
        srv.fault = None
    assert srv.other.seen[0][2].startswith("Basic ")


@pytest.mark.parametrize("value", ["soon", "0", "-5", "nan", "inf"])
def test_a_nonsense_fetch_timeout_is_refused(hostile: tuple[Hostile, dict[str, str], Path],
                                             value: str) -> None:
    srv, env, _ = hostile
    before = current(env)
    with pytest.raises(KilnError, match="REGISTRY_FETCH_TIMEOUT"):
        bootstrap({**env, "REGISTRY_FETCH_TIMEOUT": value,
                   "MODEL_BUNDLE_OCI_REF": f"{srv.host}/models/x:good"})
    assert current(env) == before
