"""Credentials for an OCI registry: the docker config file, and the answer to a 401 challenge.

A registry asks for either Basic auth (user and secret from the docker config) or a Bearer token
that a token endpoint (the challenge's `realm`) hands out for a scope such as
`repository:models/registry:pull,push`. This module turns a challenge into the Authorization header
to retry with; the registry client (oci.py) keeps one per scope.
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

Credentials = tuple[str, str]  # (user, secret); user "<token>" for an identity token


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
                  timeout: float) -> str | None:
    """The Authorization header answering a WWW-Authenticate `challenge` for `scope`, or None when
    there is nothing to answer with (no credentials for Basic, an unknown scheme)."""
    kind, _, rest = challenge.partition(" ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    basic = None
    if creds:
        basic = "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
    if kind.lower() == "basic":
        return basic
    if kind.lower() != "bearer" or "realm" not in params:
        return None
    return "Bearer " + _token(params, basic, scope, host, timeout)


def _token(params: dict[str, str], basic: str | None, scope: str, host: str,
           timeout: float) -> str:
    """A token from the challenge's realm (sending our Basic credentials when we have them)."""
    query = {"service": params.get("service", ""), "scope": params.get("scope", scope)}
    realm = urllib.parse.urlsplit(params["realm"])
    cls = http.client.HTTPSConnection if realm.scheme == "https" else http.client.HTTPConnection
    try:
        conn = cls(realm.netloc, timeout=timeout)
    except ValueError as exc:  # a realm with a malformed port
        raise PublishError(f"{params['realm']}: not a usable token endpoint ({exc})") from None
    try:
        conn.request("GET", f"{realm.path or '/'}?{urllib.parse.urlencode(query)}",
                     headers={"Authorization": basic} if basic else {})
        reply = conn.getresponse()
        data = reply.read()
    except (OSError, http.client.HTTPException) as exc:
        raise PublishError(f"{params['realm']}: token request failed ({exc})") from None
    finally:
        conn.close()
    if reply.status != 200:
        raise PublishError(f"{host}: the registry refused our credentials for {scope} "
                           f"(token endpoint answered {reply.status}); run `docker login "
                           f"{host}` or fix $DOCKER_CONFIG/config.json")
    try:
        answer = json.loads(data)
        token = answer.get("token") or answer.get("access_token")
    except (ValueError, AttributeError):
        token = None
    if not isinstance(token, str) or not token:
        raise PublishError(f"{params['realm']}: the token endpoint answered without a token")
    return token
