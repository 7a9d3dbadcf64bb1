"""Credentials for an OCI registry: the docker config file, and the answer to a 401 challenge.

A registry asks for either Basic auth (user and secret from the docker config) or a Bearer token
that a token endpoint (the challenge's `realm`) hands out for a scope such as
`repository:models/registry:pull,push`. This module turns a challenge into the Authorization header
to retry with; the registry client (oci.py) keeps one per scope.

The docker config's secret goes only where the user sent it: to the registry itself (a Basic
challenge), or to a token realm on the registry's own host[:port] or on a host listed in
$KILN_OCI_TOKEN_HOSTS (comma-separated host[:port]), and only over TLS unless that host may be
spoken to over plain HTTP (loopback, or listed in $KILN_OCI_INSECURE). Any other realm is asked
for an anonymous token, which is all a registry that sends its users elsewhere can claim. The
token answer is read to at most TOKEN_LIMIT bytes, under the request's deadline (oci_bounds.py).
"""
from __future__ import annotations

import base64
import binascii
import http.client
import json
import os
import re
import urllib.parse
from pathlib import Path

from ..errors import PublishError
from .oci_bounds import (
    ERROR_LIMIT,
    REQUEST_SECONDS,
    TIMEOUT_ENV,
    TOKEN_LIMIT,
    Deadline,
    Watchdog,
    connect_timeout,
    late,
    loads_object,
    read_capped,
)

Credentials = tuple[str, str]  # (user, secret); user "<token>" for an identity token
TOKEN_HOSTS_ENV = "KILN_OCI_TOKEN_HOSTS"
INSECURE_ENV = "KILN_OCI_INSECURE"
_LOOPBACK = ("localhost", "127.0.0.1", "::1", "[::1]")
_PORTS = {"http": 80, "https": 443}


def _listed(name: str) -> set[str]:
    return {h.strip().lower() for h in os.environ.get(name, "").split(",") if h.strip()}


def plain_http_allowed(host: str) -> bool:
    """May `host` (host[:port]) be spoken to without TLS: loopback, or in $KILN_OCI_INSECURE."""
    return host.rsplit(":", 1)[0].lower() in _LOOPBACK or host.lower() in _listed(INSECURE_ENV)


def docker_credentials(host: str) -> Credentials | None:
    """(user, secret) for `host` from $DOCKER_CONFIG/config.json or ~/.docker/config.json; None
    when the file is missing, unreadable or has no usable entry for the host."""
    folder = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    try:
        auths = json.loads((Path(folder) / "config.json").read_bytes()).get("auths") or {}
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(auths, dict):
        return None
    for key, entry in auths.items():
        if urllib.parse.urlsplit(key if "//" in key else "//" + key).netloc == host \
                and isinstance(entry, dict):
            found = _entry_credentials(entry)
            if found is not None:
                return found
    return None


def _entry_credentials(entry: dict[str, object]) -> Credentials | None:
    if entry.get("identitytoken"):
        return "<token>", str(entry["identitytoken"])
    if isinstance(entry.get("auth"), str) and entry["auth"]:
        try:
            user, _, secret = base64.b64decode(str(entry["auth"])).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return user, secret
    if entry.get("username"):
        return str(entry["username"]), str(entry.get("password", ""))
    return None


def authorization(challenge: str, creds: Credentials | None, scope: str, host: str,
                  timeout: float, *, deadline: Deadline | None = None) -> str | None:
    """The Authorization header answering a WWW-Authenticate `challenge` from the registry `host`
    for `scope`, or None when there is nothing to answer with (no credentials for Basic, an
    unknown scheme). `timeout` is the socket timeout; `deadline` bounds the token request."""
    kind, _, rest = challenge.partition(" ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    basic = None
    if creds:
        basic = "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
    if kind.lower() == "basic":
        return basic
    if kind.lower() != "bearer" or "realm" not in params:
        return None
    deadline = deadline or Deadline.after(REQUEST_SECONDS, TIMEOUT_ENV)
    return "Bearer " + _token(params, basic, scope, host, timeout, deadline)


def _realm(text: str) -> tuple[str, str, str]:
    """(scheme, host[:port] with the default port left out, path) of a token realm; one
    PublishError for anything but an absolute http(s) URL."""
    try:
        u = urllib.parse.urlsplit(text)
        port = u.port
        if u.scheme not in _PORTS or not u.hostname:
            raise ValueError("not an absolute http(s) URL")
    except ValueError as exc:
        raise PublishError(f"{text[:200]!r}: the registry names this token endpoint, which is "
                           f"not a usable URL ({exc}); refusing it") from None
    netloc = u.netloc.rpartition("@")[2].lower()
    if port == _PORTS[u.scheme]:
        netloc = netloc.rsplit(":", 1)[0]
    return u.scheme, netloc, u.path or "/"


def _bare(host: str) -> str:
    """host[:port] lower-cased, without a default port (:443 or :80)."""
    host = host.lower()
    return host.rsplit(":", 1)[0] if host.endswith((":443", ":80")) else host


def may_send_credentials(scheme: str, realm_host: str, registry_host: str) -> bool:
    """Whether the docker config's secret for `registry_host` may go to a token realm on
    `realm_host` over `scheme`: its own host or a listed one, over TLS unless allowed plain."""
    own = _bare(realm_host) in {_bare(registry_host)} | {_bare(h) for h in _listed(TOKEN_HOSTS_ENV)}
    return own and (scheme == "https" or plain_http_allowed(realm_host))


def _token(params: dict[str, str], basic: str | None, scope: str, host: str,
           timeout: float, deadline: Deadline) -> str:
    """A token from the challenge's realm (sending our Basic credentials only where they may go,
    see the module doc)."""
    scheme, netloc, path = _realm(params["realm"])
    withheld = basic is not None and not may_send_credentials(scheme, netloc, host)
    query = {"service": params.get("service", ""), "scope": params.get("scope", scope)}
    cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    where = f"{scheme}://{netloc}"
    if deadline.left() <= 0:
        raise late(where, "the token request", deadline)
    dog = Watchdog(deadline)
    try:
        with dog:
            conn = cls(netloc, timeout=connect_timeout(timeout, deadline))
            dog.watch(conn)
            try:
                conn.request("GET", f"{path}?{urllib.parse.urlencode(query)}",
                             headers={"Authorization": basic} if basic and not withheld else {})
                reply = conn.getresponse()
                data = read_capped(reply, TOKEN_LIMIT if reply.status == 200 else ERROR_LIMIT)
            finally:
                conn.close()
    except (OSError, http.client.HTTPException, ValueError) as exc:
        if dog.fired or deadline.left() <= 0:
            raise late(where, "the token request", deadline) from None
        raise PublishError(f"{where}: token request failed ({exc})") from None
    if dog.fired:
        raise late(where, "the token request", deadline)
    if reply.status != 200:
        why = (f"; your credentials were not sent to {where}, which is not {host} itself (list "
               f"it in {TOKEN_HOSTS_ENV} if you trust it) or is not TLS") if withheld else ""
        raise PublishError(f"{host}: the registry refused our credentials for {scope} "
                           f"(token endpoint answered {reply.status}); run `docker login "
                           f"{host}` or fix $DOCKER_CONFIG/config.json{why}")
    if len(data) > TOKEN_LIMIT:
        raise PublishError(f"{where}: the token answer is larger than {TOKEN_LIMIT} bytes; "
                           "refusing it")
    try:
        answer = loads_object(data, where, "the token answer")
    except PublishError:
        answer = {}
    token = answer.get("token") or answer.get("access_token")
    if not isinstance(token, str) or not token:
        raise PublishError(f"{where}: the token endpoint answered without a token")
    return token
