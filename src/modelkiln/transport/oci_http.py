"""The HTTP side of the OCI registry client: one connection, auth retries, bounded replies.

`Connection` is what `Registry` (oci.py) speaks the distribution API through: one kept-alive
connection to the registry host, the 401 challenge answered once per scope (oci_auth.py), and
every request under a deadline with its reply body read to a limit (oci_bounds.py). A blob's
redirect (a signed URL of the storage back end) is followed on a connection of its own, without
our Authorization header. URLs the registry sends (an upload's Location, a redirect) are checked
here: a malformed one is one PublishError, never an exception from deep in the standard library.
"""
from __future__ import annotations

import http.client
import io
import os
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from ..errors import PublishError
from .oci_auth import authorization, docker_credentials, plain_http_allowed
from .oci_bounds import (
    ERROR_LIMIT,
    MIN_RATE,
    REPLY_LIMIT,
    REQUEST_SECONDS,
    TIMEOUT_ENV,
    Deadline,
    Watchdog,
    connect_timeout,
    late,
    read_capped,
    seconds_from_env,
)

Progress = Callable[[int], None]
CHUNK = 1 << 20


class Response:
    """Status, headers and (for small replies) the body of one request."""

    def __init__(self, resp: http.client.HTTPResponse, body: bytes | None):
        self.status, self.body = resp.status, body or b""
        self.headers = {k.lower(): v for k, v in resp.getheaders()}
        self.raw = resp


class Connection:
    """A connection to one registry host. Not thread-safe: use one per thread.

    `timeout` bounds each socket operation; every request also runs under a deadline
    (oci_bounds.py): `KILN_OCI_TIMEOUT` seconds, plus the body's size at MIN_RATE for a blob
    or manifest sent or received, and never past `deadline` (one for all this registry's
    requests, which the runtime bootstrap sets from REGISTRY_FETCH_TIMEOUT)."""

    def __init__(self, host: str, *, timeout: float = 120.0, insecure: bool | None = None,
                 deadline: Deadline | None = None, request_seconds: float | None = None):
        self.host = host
        plain = insecure if insecure is not None else plain_http_allowed(host)
        self.scheme = "http" if plain else "https"
        self.timeout = timeout
        self.deadline = deadline
        self.request_seconds = request_seconds or seconds_from_env(
            os.environ, TIMEOUT_ENV, REQUEST_SECONDS)
        self._conn: http.client.HTTPConnection | None = None
        self._auth: dict[str, str] = {}  # scope -> Authorization header value
        self._creds = docker_credentials(host)

    # -- plumbing -------------------------------------------------------------------------------

    def budget(self, size: int = 0) -> Deadline:
        """The deadline of one request that moves `size` body bytes."""
        own = Deadline.after(self.request_seconds + size / MIN_RATE, TIMEOUT_ENV)
        return own.sooner(self.deadline)

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPConnection if self.scheme == "http" else http.client.HTTPSConnection
            self._conn = cls(self.host, timeout=self.timeout, blocksize=CHUNK)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @contextmanager
    def _guarded(self, deadline: Deadline, what: str) -> Iterator[Watchdog]:
        """Run the block under a Watchdog; a failure after the deadline passed is `late`."""
        if deadline.left() <= 0:
            raise late(f"{self.scheme}://{self.host}", what, deadline)
        dog = Watchdog(deadline)
        try:
            with dog:
                yield dog
        except Exception:
            if not (dog.fired or deadline.left() <= 0):  # a socket timeout cut to the deadline
                raise
            self.close()
            raise late(f"{self.scheme}://{self.host}", what, deadline) from None
        if dog.fired:  # it ended as the deadline passed: the connection is shut down
            self.close()
            raise late(f"{self.scheme}://{self.host}", what, deadline)

    def request(self, method: str, path: str, *, scope: str, headers: dict[str, str] | None = None,
                body: bytes | Upload | None = None, stream: bool = False,
                retry_auth: bool = True, limit: int = REPLY_LIMIT,
                deadline: Deadline | None = None, watch: Watchdog | None = None) -> Response:
        """One request with auth, under `deadline` (default `budget()`). A reply body is read to
        at most `limit` + 1 bytes (an error reply's to ERROR_LIMIT + 1); `stream` leaves a 2xx
        body unread for the caller, who reads `raw` under the Watchdog it passes as `watch`."""
        deadline = deadline or self.budget()
        url = self._target(path)
        if watch is not None:
            return self._exchange(method, url, scope, headers, body, stream, retry_auth, limit,
                                  watch)
        with self._guarded(deadline, f"{method} {url}") as dog:
            return self._exchange(method, url, scope, headers, body, stream, retry_auth, limit,
                                  dog)

    def _exchange(self, method: str, url: str, scope: str, headers: dict[str, str] | None,
                  body: bytes | Upload | None, stream: bool, retry_auth: bool, limit: int,
                  dog: Watchdog) -> Response:
        resp = self._send(method, url, self._headers(headers, scope), body, dog)
        if resp.status == 401 and retry_auth and self._login(resp, scope, dog.deadline):
            self._read(resp, ERROR_LIMIT)
            if isinstance(body, Upload):
                body.seek(0)
            resp = self._send(method, url, self._headers(headers, scope), body, dog)
        data = None if stream and resp.status < 300 else self._read(resp, limit)
        return Response(resp, data)

    def _headers(self, headers: dict[str, str] | None, scope: str) -> dict[str, str]:
        hdrs = dict(headers or {})
        if scope in self._auth:
            hdrs["Authorization"] = self._auth[scope]
        return hdrs

    def _target(self, path: str) -> str:
        """The request target of `path`, which may be an absolute URL the registry sent (an
        upload's Location): on this registry whatever host it names."""
        if path.startswith("/"):
            return path
        try:
            target = urllib.parse.urlsplit(path)._replace(scheme="", netloc="").geturl()
        except ValueError as exc:
            raise PublishError(f"{self.host}: the registry sent the malformed URL "
                               f"{path[:200]!r} ({exc}); refusing to follow it") from None
        return target if target.startswith("/") else "/" + target

    def _send(self, method: str, url: str, headers: dict[str, str], body: bytes | Upload | None,
              dog: Watchdog) -> http.client.HTTPResponse:
        try:
            conn = self._connection()
            conn.timeout = connect_timeout(self.timeout, dog.deadline)
            if conn.sock is not None:
                conn.sock.settimeout(conn.timeout)
            dog.watch(conn)
            conn.request(method, url, body=body, headers=headers)
            return conn.getresponse()
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self.close()
            raise PublishError(f"{self.scheme}://{self.host}: {method} {url[:200]} failed ({exc}); "
                               "is the registry running and reachable?") from None

    def _read(self, resp: http.client.HTTPResponse, limit: int) -> bytes:
        """A reply body cut at `limit` + 1 bytes (ERROR_LIMIT + 1 for an error reply)."""
        try:
            data = read_capped(resp, limit if resp.status < 300 else ERROR_LIMIT)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self.close()
            raise PublishError(f"{self.scheme}://{self.host}: a reply broke off ({exc}); run "
                               "the command again") from None
        if not resp.isclosed():
            self.close()  # the rest is unread, so this connection cannot carry another request
        return data

    def _login(self, resp: http.client.HTTPResponse, scope: str, deadline: Deadline) -> bool:
        """Answer a 401 challenge for `scope`; False when there is nothing to answer with."""
        header = authorization(resp.getheader("WWW-Authenticate") or "", self._creds, scope,
                               self.host, self.timeout, deadline=deadline)
        if header is None:
            return False
        self._auth[scope] = header
        return True

    def _follow(self, location: str, dog: Watchdog,
                deadline: Deadline) -> tuple[Response, http.client.HTTPConnection]:
        """GET a blob's redirect target (often a signed URL of the storage back end; a relative
        one is on this registry), without our Authorization header, watched by `dog`."""
        try:
            u = urllib.parse.urlsplit(urllib.parse.urljoin(f"{self.scheme}://{self.host}/",
                                                           location))
            if u.scheme not in ("http", "https") or not u.hostname:
                raise ValueError("not an http(s) URL")
            _ = u.port  # a malformed port is refused here, not deep in http.client
        except ValueError as exc:
            raise PublishError(f"{self.host}: a blob redirect to {location[:200]!r} is not a "
                               f"usable URL ({exc}); refusing it") from None
        cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
        conn = cls(u.netloc, timeout=connect_timeout(self.timeout, deadline), blocksize=CHUNK)
        try:
            dog.watch(conn)
            conn.request("GET", (u.path or "/") + (f"?{u.query}" if u.query else ""))
            resp = conn.getresponse()
            body = None if resp.status == 200 else read_capped(resp, ERROR_LIMIT)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            conn.close()
            raise PublishError(f"{self.host}: the blob redirect to {u.scheme}://{u.netloc} "
                               f"failed ({exc})") from None
        return Response(resp, body), conn

    def _fail(self, what: str, r: Response) -> PublishError:
        detail = r.body[:300].decode(errors="replace").strip()
        hint = "; log in with `docker login` (the docker config file)" if r.status in (401, 403) \
            else ""
        return PublishError(f"{self.host}: {what} answered HTTP {r.status} {detail}{hint}")


class Upload:
    """A file (or bytes) read as an upload's body, counting what was sent and reporting progress."""

    def __init__(self, source: Path | bytes, progress: Progress | None):
        # closed by __exit__: the reader lives exactly as long as the upload's `with` block
        self._f: BinaryIO = (open(source, "rb") if isinstance(source, Path)  # noqa: SIM115
                             else io.BytesIO(source))
        self.progress, self.count = progress, 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.count += len(data)
        if self.progress and data:
            self.progress(len(data))
        return data

    def seek(self, pos: int) -> None:
        self._f.seek(pos)
        self.count = pos

    def __enter__(self) -> Upload:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()
