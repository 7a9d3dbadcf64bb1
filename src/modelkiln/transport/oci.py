"""A small client for the OCI distribution API (what every container registry speaks).

Why hand-written on the standard library: the runtime bootstrap must be able to pull a model
artifact with the core install only (no requests, no docker), and publishing needs things the
maintained Python OCI client (oras-py, built on requests) does not give us: the exact manifest
bytes we computed (so the digest is reproducible), a HEAD before every blob so a re-push sends
nothing, a byte count of what was really sent, the registry's returned digest checked against
ours, and every pulled blob hashed while it streams and refused on a mismatch. The protocol
subset is small: `/v2/` ping, blob HEAD/GET, uploads (monolithic PUT or chunked PATCH), manifest
HEAD/GET/PUT, and Basic or Bearer-token auth from the standard docker config file (oci_auth.py).
What a reply may cost in memory and time is bounded in oci_bounds.py.

References are `HOST[:PORT]/REPO[:TAG][@sha256:HEX]` (an `oci://` prefix is accepted). Loopback
hosts, and hosts listed in $KILN_OCI_INSECURE (comma-separated), are spoken to over plain HTTP.
"""
from __future__ import annotations

import hashlib
import http.client
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..artifacts.digest import sha256_bytes
from ..artifacts.oci import media
from ..errors import KilnError, PublishError
from .oci_bounds import loads_object
from .oci_http import CHUNK, Connection, Progress, Response, Upload

__all__ = ["CHUNK", "Progress", "Reference", "Registry", "Response"]
_REF = re.compile(r"^(?P<host>[^/]+)/(?P<repo>[a-z0-9]+(?:[._/-][a-z0-9]+)*)"
                  r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9._-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$")
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


class Registry(Connection):
    """The distribution API on one registry host (see the module doc). Not thread-safe."""

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
        try:
            return int(r.headers.get("content-length", "-1"))
        except ValueError:
            raise PublishError(f"{self.host}/{repo}: HEAD blob {digest} answered a Content-Length "
                               "that is not a number; refusing the registry's answer") from None

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
        with Upload(source, progress) as reader:
            if chunk is None or size <= chunk:
                r = self.request("PUT", _add_query(where, digest=digest), scope=scope,
                                 headers={"Content-Length": str(size),
                                          "Content-Type": "application/octet-stream"},
                                 body=reader, deadline=self.budget(size))
            else:
                start = 0
                while start < size:
                    n = min(chunk, size - start)
                    piece = reader.read(n)
                    r = self.request("PATCH", where, scope=scope, body=piece, headers={
                        "Content-Length": str(n), "Content-Type": "application/octet-stream",
                        "Content-Range": f"{start}-{start + n - 1}"}, deadline=self.budget(n))
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
                         headers={"Content-Type": media_type, "Content-Length": str(len(data))},
                         deadline=self.budget(len(data)))
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
        named = r.headers.get("docker-content-digest", "")
        return named if media.DIGEST_RE.match(named) else self.get_manifest(repo, ref)[2]

    def get_manifest(self, repo: str, ref: str, limit: int = 4 << 20) -> tuple[bytes, str, str]:
        """(bytes, media type, digest) of a manifest; a digest reference is checked byte-exact."""
        r = self.request("GET", f"/v2/{repo}/manifests/{ref}", scope=_pull(repo),
                         headers={"Accept": ACCEPT}, limit=limit, deadline=self.budget(limit))
        if r.status != 200:
            raise self._fail(f"GET manifest {repo}:{ref}", r)
        if len(r.body) > limit:
            raise PublishError(f"{self.host}/{repo}:{ref}: manifest larger than {limit} bytes")
        digest = "sha256:" + sha256_bytes(r.body)
        expected = ref if ref.startswith("sha256:") else r.headers.get("docker-content-digest")
        if expected and expected != digest:
            raise PublishError(f"{self.host}/{repo}@{expected}: the registry served bytes whose "
                               f"digest is {digest}; refusing a tampered manifest")
        named = loads_object(r.body, f"{self.host}/{repo}:{ref}").get("mediaType")
        kind = named if isinstance(named, str) and named else \
            r.headers.get("content-type", "").split(";")[0].strip()
        return r.body, kind, digest

    def get_blob(self, repo: str, digest: str, size: int, out: BinaryIO,
                 progress: Progress | None = None) -> None:
        """Stream a blob into `out`, hashing as it goes, under one deadline for the transfer
        (redirects included); PublishError on any size or digest mismatch (the caller discards
        what was written)."""
        deadline = self.budget(size)
        hops: list[http.client.HTTPConnection] = []
        try:
            with self._guarded(deadline, f"GET blob {digest}") as dog:
                r = self.request("GET", f"/v2/{repo}/blobs/{digest}", scope=_pull(repo),
                                 stream=True, deadline=deadline, watch=dog)
                for _ in range(3):  # storage back ends may redirect to a signed URL
                    if r.status not in (301, 302, 303, 307, 308):
                        break
                    r, conn = self._follow(r.headers.get("location", ""), dog, deadline)
                    hops.append(conn)
                if r.status != 200:
                    raise self._fail(f"GET blob {digest}", r)
                self._stream(r, repo, digest, size, out, progress)
        finally:
            for conn in hops:
                conn.close()

    def _stream(self, r: Response, repo: str, digest: str, size: int, out: BinaryIO,
                progress: Progress | None) -> None:
        h, got = hashlib.sha256(), 0
        while True:
            try:
                chunk = r.raw.read(min(CHUNK, size - got + 1))
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self.close()
                raise PublishError(f"{self.host}/{repo}: blob {digest} broke off after {got} "
                                   f"bytes ({exc}); run the command again") from None
            if not chunk:
                break
            got += len(chunk)
            if got > size:
                break
            h.update(chunk)
            out.write(chunk)
            if progress:
                progress(len(chunk))
        if got != size or "sha256:" + h.hexdigest() != digest:
            self.close()
            raise PublishError(f"{self.host}/{repo}: blob {digest} arrived as {got} bytes with "
                               f"a different digest; refusing tampered or truncated content")


def _add_query(location: str, **params: str) -> str:
    sep = "&" if "?" in location else "?"
    return location + sep + urllib.parse.urlencode(params)


def _pull(repo: str) -> str:
    return f"repository:{repo}:pull"


def _push(repo: str) -> str:
    return f"repository:{repo}:pull,push"
