"""What one exchange with a registry may cost: bytes held in memory, and time.

A registry (or a token endpoint, or whatever a redirect points at) is a peer we do not control.
A per-socket timeout does not bound a request: a peer that sends one byte every half second
never lets a read time out, and `HTTPResponse.read()` keeps whatever length the peer sends. So:

- every reply body is read in pieces, at most `limit + 1` bytes (the one byte more tells "at the
  limit" from "over it"): a manifest or an index `REPLY_LIMIT`, a token answer `TOKEN_LIMIT`, an
  error reply `ERROR_LIMIT` (we show 300 bytes of it);
- every request runs under a `Deadline`: a `Watchdog` timer shuts the connection's socket down
  when the deadline passes, which ends a blocked send or receive at once, and the caller reports
  the deadline (`late`), not the broken connection. A request gets `KILN_OCI_TIMEOUT` seconds; a
  blob transfer that much more per MiB at `MIN_RATE`; the runtime bootstrap adds one overall
  deadline for its whole fetch (`REGISTRY_FETCH_TIMEOUT`, runtime/oci_fetch.py).

JSON from a registry goes through `loads_object`, which turns malformed, deeply nested or
non-object documents into one PublishError line.
"""
from __future__ import annotations

import http.client
import json
import math
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import KilnError, PublishError

ERROR_LIMIT = 64 << 10
REPLY_LIMIT = 4 << 20
TOKEN_LIMIT = 1 << 20
TIMEOUT_ENV = "KILN_OCI_TIMEOUT"
REQUEST_SECONDS = 300.0
MIN_RATE = 1 << 20  # bytes per second a blob transfer is granted beyond KILN_OCI_TIMEOUT
_PIECE = 1 << 16


@dataclass(frozen=True)
class Deadline:
    """A point in `time.monotonic()` by which something must be done, and what set it."""

    at: float
    seconds: float
    setting: str  # the variable that sets it, named in the error

    @classmethod
    def after(cls, seconds: float, setting: str) -> Deadline:
        return cls(time.monotonic() + seconds, seconds, setting)

    def left(self) -> float:
        return self.at - time.monotonic()

    def sooner(self, other: Deadline | None) -> Deadline:
        return self if other is None or self.at <= other.at else other


def late(where: str, what: str, deadline: Deadline) -> PublishError:
    """The error for a request or transfer that ran past `deadline`."""
    return PublishError(f"{where}: {what} did not finish within {deadline.seconds:g} s "
                        f"({deadline.setting}); the registry is stalled or too slow, try again "
                        f"later (or raise {deadline.setting} for a slow link)")


class Watchdog:
    """Shuts down the sockets it watches once its deadline passes.

    A shutdown (not a close: the owning thread still holds the socket) wakes any send or
    receive blocked on it; `fired` then tells the caller why its call failed. Sockets, not
    connections, are watched: http.client lets go of a connection's socket when the reply says
    `Connection: close`, while the reply still reads from it."""

    def __init__(self, deadline: Deadline):
        self.deadline = deadline
        self.fired = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, deadline.left()), self._fire)
        self._timer.daemon = True

    def watch(self, conn: http.client.HTTPConnection) -> None:
        """Connect `conn` if it is not, and shut its socket down too when the deadline passes
        (at once if it already has). The connect is not watched (there is no socket yet): its
        timeout, `connect_timeout`, bounds it, the TLS handshake included (CPython's handshake
        takes the socket timeout as a deadline for the whole exchange)."""
        if conn.sock is None:
            conn.connect()
        sock = conn.sock
        assert sock is not None  # connect() set it or raised
        with self._lock:
            self._socks.append(sock)
            fired = self.fired
        if fired:
            _shutdown(sock)

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            socks = list(self._socks)
        for sock in socks:
            _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    try:  # the plain socket's shutdown, also under TLS: it only ends the byte stream
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


def connect_timeout(socket_timeout: float, deadline: Deadline) -> float:
    """The socket timeout for a new connection: a connect is not watched (no socket yet)."""
    return max(0.001, min(socket_timeout, deadline.left()))


def read_capped(resp: http.client.HTTPResponse, limit: int) -> bytes:
    """At most `limit + 1` bytes of a reply body: a longer one is cut there, never held whole.
    The rest stays unread: the caller closes the connection when `resp.isclosed()` is False."""
    buf = bytearray()
    while len(buf) <= limit:
        piece = resp.read(min(_PIECE, limit + 1 - len(buf)))
        if not piece:
            break
        buf += piece
    return bytes(buf)


def loads_object(data: bytes, origin: str, what: str = "manifest") -> dict[str, Any]:
    """A JSON object from a registry, or one PublishError (malformed, too deeply nested, or
    not an object)."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise PublishError(f"{origin}: {what} is not JSON (or nested too deeply to read); "
                           "refusing it") from None
    if not isinstance(doc, dict):
        raise PublishError(f"{origin}: {what} is not a JSON object; refusing it")
    return doc


def seconds_from_env(env: Mapping[str, str], name: str, default: float) -> float:
    """A positive number of seconds from `env[name]`, else `default`; KilnError for nonsense."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise KilnError(f"{name}={raw!r}: give a positive number of seconds, e.g. {default:g}")
    return value
