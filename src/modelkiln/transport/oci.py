"""A small client for the OCI distribution API (what every container registry speaks).

Why hand-written on the standard library: the runtime bootstrap must be able to pull a model
artifact with the core install only (no requests, no docker), and publishing needs things the
maintained Python OCI client (oras-py, built on requests) does not give us: the exact manifest
bytes we computed (so the digest is reproducible), a HEAD before every blob so a re-push sends
nothing, a byte count of what was really sent, the registry's returned digest checked against
ours, and every pulled blob hashed while it streams and refused on a mismatch. The protocol
subset is small: `/v2/` ping, blob HEAD/GET, uploads (monolithic PUT or chunked PATCH), manifest
HEAD/GET/PUT, and Basic or Bearer-token auth from the standard docker config file (oci_auth.py).

References are `HOST[:PORT]/REPO[:TAG][@sha256:HEX]` (an `oci://` prefix is accepted). Loopback
hosts, and hosts listed in $KILN_OCI_INSECURE (comma-separated), are spoken to over plain HTTP.
"""
from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..artifacts.digest import sha256_bytes
from ..artifacts.oci import media
from ..errors import KilnError, PublishError
from .oci_auth import authorization, docker_credentials

Progress = Callable[[int], None]
CHUNK = 1 << 20
_REF = re.compile(r"^(?P<host>[^/]+)/(?P<repo>[a-z0-9]+(?:[._/-][a-z0-9]+)*)"
                  r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9._-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$")
_LOOPBACK = ("localhost", "127.0.0.1", "::1", "[::1]")
ACCEPT = ", ".join(media.MANIFEST_TYPES)


@dataclass(frozen=True)
class Reference:
    """A parsed image reference."""

    host: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        raw = text.removeprefix("oci://")
        m = _REF.match(raw)
        if m is None or ("." not in m["host"] and ":" not in m["host"] and m["host"] != "localhost"):
            raise KilnError(f"{text!r}: not an OCI reference; write HOST[:PORT]/REPO[:TAG]"
                            "[@sha256:DIGEST], e.g. registry.example.com/models/registry:3.0.0-onnx")
        return cls(m["host"], m["repo"], m["tag"], m["digest"])

    @property
    def ref(self) -> str:
        """What goes after /manifests/: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.host, self.repository, self.tag, digest)

    def __str__(self) -> str:
        tag = f":{self.tag}" if self.tag else ""
        pin = f"@{self.digest}" if self.digest else ""
        return f"{self.host}/{self.repository}{tag}{pin}"


class Response:
    """Status, headers and (for small replies) the body of one request."""

    def __init__(self, resp: http.client.HTTPResponse, body: bytes | None):
        self.status, self.body = resp.status, body or b""
        self.headers = {k.lower(): v for k, v in resp.getheaders()}
        self.raw = resp


class Registry:
    """A connection to one registry host. Not thread-safe: use one per thread."""

    def __init__(self, host: str, *, timeout: float = 120.0, insecure: bool | None = None):
        self.host = host
        listed = {h.strip() for h in os.environ.get("KILN_OCI_INSECURE", "").split(",")}
        plain = insecure if insecure is not None else (
            host.rsplit(":", 1)[0] in _LOOPBACK or host in listed)
        self.scheme = "http" if plain else "https"
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self._auth: dict[str, str] = {}  # scope -> Authorization header value
        self._creds = docker_credentials(host)

    # -- plumbing -------------------------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPConnection if self.scheme == "http" else http.client.HTTPSConnection
            self._conn = cls(self.host, timeout=self.timeout, blocksize=CHUNK)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, method: str, path: str, *, scope: str, headers: dict[str, str] | None = None,
                body: bytes | _Reader | None = None, stream: bool = False,
                retry_auth: bool = True) -> Response:
        """One request with auth; `stream` leaves the body unread (the caller reads raw)."""
        hdrs = dict(headers or {})
        if scope in self._auth:
            hdrs["Authorization"] = self._auth[scope]
        url = path if path.startswith("/") else urllib.parse.urlsplit(path)._replace(
            scheme="", netloc="").geturl()
        try:
            conn = self._connection()
            conn.request(method, url, body=body, headers=hdrs)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise PublishError(f"{self.scheme}://{self.host}: {method} {url} failed ({exc}); "
                               "is the registry running and reachable?") from None
        if resp.status == 401 and retry_auth and self._login(resp, scope):
            resp.read()
            if isinstance(body, _Reader):
                body.seek(0)
            return self.request(method, path, scope=scope, headers=headers, body=body,
                                stream=stream, retry_auth=False)
        data = None if stream and resp.status < 300 else resp.read()
        return Response(resp, data)

    def _login(self, resp: http.client.HTTPResponse, scope: str) -> bool:
        """Answer a 401 challenge for `scope`; False when there is nothing to answer with."""
        header = authorization(resp.getheader("WWW-Authenticate") or "", self._creds, scope,
                               self.host, self.timeout)
        if header is None:
            return False
        self._auth[scope] = header
        return True

    def _follow(self, location: str) -> Response:
        """GET a blob's redirect target (often a signed URL of the storage back end; a relative
        one is on this registry), without our Authorization header."""
        u = urllib.parse.urlsplit(urllib.parse.urljoin(f"{self.scheme}://{self.host}/", location))
        cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
        try:
            conn = cls(u.netloc, timeout=self.timeout, blocksize=CHUNK)
            conn.request("GET", u.path + (f"?{u.query}" if u.query else ""))
            resp = conn.getresponse()
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise PublishError(f"{self.host}: the blob redirect to {u.scheme}://{u.netloc} "
                               f"failed ({exc})") from None
        return Response(resp, None if resp.status == 200 else resp.read())

    def _fail(self, what: str, r: Response) -> PublishError:
        detail = r.body[:300].decode(errors="replace").strip()
        hint = "; log in with `docker login` (the docker config file)" if r.status in (401, 403) \
            else ""
        return PublishError(f"{self.host}: {what} answered HTTP {r.status} {detail}{hint}")

    # -- the API --------------------------------------------------------------------------------

    def ping(self) -> None:
        r = self.request("GET", "/v2/", scope="registry:catalog:*")
        if r.status != 200:
            raise self._fail("GET /v2/", r)

    def blob_size(self, repo: str, digest: str) -> int | None:
        """Size of a blob the registry holds, or None when it does not."""
        r = self.request("HEAD", f"/v2/{repo}/blobs/{digest}", scope=_pull(repo))
        if r.status == 404:
            return None
        if r.status != 200:
            raise self._fail(f"HEAD blob {digest}", r)
        return int(r.headers.get("content-length", "-1"))

    def upload_blob(self, repo: str, digest: str, size: int, source: Path | bytes, *,
                    chunk: int | None = None, progress: Progress | None = None) -> int:
        """Upload one blob (monolithic PUT, or PATCH chunks of `chunk` bytes); returns bytes sent.

        The registry checks the digest we declare against the bytes it receives; we check its
        answer (201 + Docker-Content-Digest) in turn."""
        scope = _push(repo)
        r = self.request("POST", f"/v2/{repo}/blobs/uploads/", scope=scope,
                         headers={"Content-Length": "0"})
        if r.status != 202 or "location" not in r.headers:
            raise self._fail(f"start upload of {digest}", r)
        where = r.headers["location"]
        with _Reader(source, progress) as reader:
            if chunk is None or size <= chunk:
                r = self.request("PUT", _add_query(where, digest=digest), scope=scope,
                                 headers={"Content-Length": str(size),
                                          "Content-Type": "application/octet-stream"},
                                 body=reader)
            else:
                start = 0
                while start < size:
                    n = min(chunk, size - start)
                    piece = reader.read(n)
                    r = self.request("PATCH", where, scope=scope, body=piece, headers={
                        "Content-Length": str(n), "Content-Type": "application/octet-stream",
                        "Content-Range": f"{start}-{start + n - 1}"})
                    if r.status != 202:
                        raise self._fail(f"upload chunk {start}-{start + n - 1} of {digest}", r)
                    where, start = r.headers.get("location", where), start + n
                r = self.request("PUT", _add_query(where, digest=digest), scope=scope,
                                 headers={"Content-Length": "0"})
            sent = reader.count
        if r.status != 201:
            raise self._fail(f"upload of {digest}", r)
        got = r.headers.get("docker-content-digest")
        if got and got != digest:
            raise PublishError(f"{self.host}: stored blob as {got}, but we sent {digest}")
        return sent

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str:
        """PUT a manifest under a tag or digest; returns its digest, checked against ours."""
        mine = "sha256:" + sha256_bytes(data)
        r = self.request("PUT", f"/v2/{repo}/manifests/{ref}", scope=_push(repo), body=data,
                         headers={"Content-Type": media_type, "Content-Length": str(len(data))})
        if r.status != 201:
            raise self._fail(f"PUT manifest {repo}:{ref}", r)
        got = r.headers.get("docker-content-digest")
        if got and got != mine:
            raise PublishError(f"{self.host}/{repo}:{ref}: the registry recorded digest {got}, "
                               f"ours is {mine}; it rewrote the manifest, refusing to trust it")
        return mine

    def manifest_digest(self, repo: str, ref: str) -> str | None:
        """The digest a tag points at (HEAD), or None when the tag does not exist."""
        r = self.request("HEAD", f"/v2/{repo}/manifests/{ref}", scope=_pull(repo),
                         headers={"Accept": ACCEPT})
        if r.status == 404:
            return None
        if r.status != 200:
            raise self._fail(f"HEAD manifest {repo}:{ref}", r)
        return r.headers.get("docker-content-digest") or self.get_manifest(repo, ref)[2]

    def get_manifest(self, repo: str, ref: str, limit: int = 4 << 20) -> tuple[bytes, str, str]:
        """(bytes, media type, digest) of a manifest; a digest reference is checked byte-exact."""
        r = self.request("GET", f"/v2/{repo}/manifests/{ref}", scope=_pull(repo),
                         headers={"Accept": ACCEPT})
        if r.status != 200:
            raise self._fail(f"GET manifest {repo}:{ref}", r)
        if len(r.body) > limit:
            raise PublishError(f"{self.host}/{repo}:{ref}: manifest larger than {limit} bytes")
        digest = "sha256:" + sha256_bytes(r.body)
        expected = ref if ref.startswith("sha256:") else r.headers.get("docker-content-digest")
        if expected and expected != digest:
            raise PublishError(f"{self.host}/{repo}@{expected}: the registry served bytes whose "
                               f"digest is {digest}; refusing a tampered manifest")
        media = r.headers.get("content-type", "").split(";")[0].strip()
        try:
            media = json.loads(r.body).get("mediaType") or media
        except (ValueError, AttributeError):
            raise PublishError(f"{self.host}/{repo}:{ref}: manifest is not JSON") from None
        return r.body, media, digest

    def get_blob(self, repo: str, digest: str, size: int, out: BinaryIO,
                 progress: Progress | None = None) -> None:
        """Stream a blob into `out`, hashing as it goes; PublishError on any size or digest
        mismatch (the caller discards what was written)."""
        r = self.request("GET", f"/v2/{repo}/blobs/{digest}", scope=_pull(repo), stream=True)
        for _ in range(3):  # storage back ends may redirect to a signed URL
            if r.status not in (301, 302, 303, 307, 308):
                break
            r = self._follow(r.headers.get("location", ""))
        if r.status != 200:
            raise self._fail(f"GET blob {digest}", r)
        h, got = hashlib.sha256(), 0
        try:
            while chunk := r.raw.read(min(CHUNK, size - got + 1)):
                got += len(chunk)
                if got > size:
                    break
                h.update(chunk)
                out.write(chunk)
                if progress:
                    progress(len(chunk))
        except (http.client.HTTPException, ConnectionError, TimeoutError) as exc:
            self.close()
            raise PublishError(f"{self.host}/{repo}: blob {digest} broke off after {got} bytes "
                               f"({exc}); run the command again") from None
        if got != size or "sha256:" + h.hexdigest() != digest:
            self.close()
            raise PublishError(f"{self.host}/{repo}: blob {digest} arrived as {got} bytes with "
                               f"a different digest; refusing tampered or truncated content")


class _Reader:
    """A file (or bytes) read for an upload, counting what was sent and reporting progress."""

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

    def __enter__(self) -> _Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def _add_query(location: str, **params: str) -> str:
    sep = "&" if "?" in location else "?"
    return location + sep + urllib.parse.urlencode(params)


def _pull(repo: str) -> str:
    return f"repository:{repo}:pull"


def _push(repo: str) -> str:
    return f"repository:{repo}:pull,push"
