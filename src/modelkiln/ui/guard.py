"""Who may use the pages and their actions: the access token, the CSRF token, the Host check and
the response headers.

- Loopback (the default bind): only requests whose Host names a loopback address get an answer,
  so a web page elsewhere cannot reach the server through a DNS name rebound to 127.0.0.1.
- Another address: every request must carry the access token (`?token=` once, which sets a
  cookie and redirects to the same page without it; the cookie; or `Authorization: Bearer`).
  `kiln ui` refuses to bind one without a token.
- Actions are POST forms carrying this process's CSRF token (a random value made at start and
  compared in constant time); a POST without it, with another one, or from another Origin is 403.
  A page on another site cannot read the token, so it cannot make a working form. A token per
  process is enough here (no sessions, four forms); Flask-WTF would add WTForms for that.
- `--read-only`: the pages show no actions and every POST is 403.
- Every response forbids scripts outright (Content-Security-Policy `default-src 'none'`): the
  pages use none, so markup that slipped past escaping still could not run.
"""
from __future__ import annotations

import hmac
import ipaddress
import secrets
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

from flask import Flask, abort, redirect, request
from werkzeug.wrappers import Response

COOKIE = "kiln_ui_token"
CSP = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`."""
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass
class Guard:
    """The server's access settings and its CSRF token."""

    loopback: bool
    read_only: bool = False
    token: str | None = None
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    def install(self, app: Flask) -> None:
        app.before_request(self.check)
        app.after_request(self.headers)

    def _same(self, given: str | None, wanted: str | None) -> bool:
        return bool(given and wanted) and hmac.compare_digest(str(given), str(wanted))

    def check(self) -> Response | None:
        """Refuse what may not pass; None lets the request through."""
        if self.loopback and not is_loopback(urlsplit(f"//{request.host}").hostname or ""):
            abort(403, "this server answers only requests addressed to a loopback name "
                       "(127.0.0.1, localhost)")
        if self.token is not None:
            query = request.args.get("token")
            if self._same(query, self.token):
                rest = {k: v for k, v in request.args.items(multi=False) if k != "token"}
                target = request.path + (f"?{urlencode(rest)}" if rest else "")
                answer = redirect(target, code=303)
                answer.set_cookie(COOKIE, self.token, httponly=True, samesite="Strict")
                return answer
            bearer = request.headers.get("Authorization", "")
            given = bearer[7:] if bearer.startswith("Bearer ") else request.cookies.get(COOKIE)
            if not self._same(given, self.token):
                abort(401, "an access token is required: open the URL with ?token=<the token "
                           "kiln ui was started with>")
        if request.method == "POST":
            if self.read_only:
                abort(403, "this server is read-only (kiln ui --read-only)")
            origin = request.headers.get("Origin")
            if origin and urlsplit(origin).netloc != request.host:
                abort(403, "the form came from another origin")
            if not self._same(request.form.get("csrf"), self.csrf):
                abort(403, "missing or wrong CSRF token: reload the page and try again")
        return None

    @staticmethod
    def headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        # same-origin, not no-referrer: under no-referrer browsers send `Origin: null` with a
        # form POST, which the Origin check above would refuse
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Cache-Control"] = "no-store"
        return response
