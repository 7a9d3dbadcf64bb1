"""A hostile OCI registry for the tests and the reliability bench: stdlib `http.server` in a thread
on loopback, speaking just enough of the distribution API (manifests, blobs, uploads, Bearer
tokens) to carry a bootstrap or a push, until `fault` tells it to misbehave:

    huge-manifest / endless-manifest   a 512 MiB manifest / one that never ends
    huge-error / endless-error         a 404 or 500 whose body is 512 MiB / never ends
    token-huge / token-endless         a Bearer challenge whose token answer is 512 MiB / endless
    token-drip                         a token endpoint that drips one byte every 0.5 s
    drip-headers                       every reply's headers dripped, one byte every 0.5 s
    drip-body / drip-blob              a manifest's / blob's body dripped the same way
    redirect-bad / redirect-file       a blob redirect to `http://[::1` / `file:///etc/passwd`
    realm-bad                          a token realm `http://[::1`
    realm-other                        a token realm on another origin (`other`, which records
                                       the Authorization header it was sent)
    bearer                             a polite Bearer challenge, the realm on this server
    location-bad                       an upload Location `http://[::1`
    length-bad                         a blob HEAD whose Content-Length is not a number

`artifact()` makes a modelkiln model artifact (manifest + blobs) from files, hostile or not.
`drive()` runs a bootstrap or a push in a child process, under a 1 GiB address-space limit (so
a client that reads an endless reply fails there instead of eating the machine), and returns
its outcome, message, peak RSS and seconds; run as a script, this file is that child.
"""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple

HUGE = 512 << 20
DRIP_S = 0.5
ONNX_FILES = {"registry_model_int8.onnx": b"onnx" * 100, "tokenizer/tokenizer.json": b"{}",
              "thresholds.json": b'{"a": 0.5}', "registry_label_fields.json": b"[]"}
_PATH = re.compile(r"^/v2/(?P<repo>.+?)/(?P<kind>manifests|blobs)/(?P<ref>[^/?]+)")


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def artifact(files: dict[str, bytes], backend: str = "onnx", version: str = "1.0.0",
             name: str = "hostile") -> tuple[bytes, dict[str, bytes]]:
    """(manifest bytes, digest -> blob) of a model artifact laid out as `kiln publish` does."""
    from modelkiln.artifacts.oci import media

    inner = (json.dumps({"schema_version": 1, "name": name, "version": version,
                         "backend": backend, "files": [
                             {"path": p, "size": len(b), "sha256": sha(b)[7:]}
                             for p, b in sorted(files.items())]}, indent=2) + "\n").encode()
    blobs = {sha(b): b for b in [*files.values(), inner, b"{}"]}
    layers = [media.Descriptor(media.MODEL_WEIGHT_RAW, sha(b), len(b), ((media.FILEPATH, p),))
              for p, b in sorted({**files, "manifest.json": inner}.items())]
    config = media.Descriptor(media.MODEL_CONFIG, sha(b"{}"), 2)
    notes = {media.BUNDLE_MANIFEST: sha(inner), media.BUNDLE_BACKEND: backend,
             media.BUNDLE_NAME: name}
    return media.manifest_bytes(config, layers, notes, media.MODEL_ARTIFACT), blobs


def layout(root: Path, layer: bytes = b"weights" * 100) -> Path:
    """An OCI layout under `root` with one small image manifest tagged `model`, to push."""
    from modelkiln.artifacts.oci import media
    from modelkiln.artifacts.oci.layout import OciLayout

    lay = OciLayout(root)
    lay.init()
    config = lay.put_bytes(b"{}", media.MODEL_CONFIG)
    blob = lay.put_bytes(layer, media.MODEL_WEIGHT_RAW)
    man = lay.put_bytes(media.manifest_bytes(config, [blob]), media.MANIFEST)
    lay.write_index([media.Descriptor(man.media_type, man.digest, man.size,
                                      ((media.REF_NAME, "model"),))])
    return root


class Hostile(ThreadingHTTPServer):
    """The server; `fault` (one of the module doc's names, or None) may change between calls."""

    daemon_threads = True

    def __init__(self, bind: str = "127.0.0.1") -> None:
        super().__init__((bind, 0), _Handler)
        self.fault: str | None = None
        self.other: Hostile | None = None  # realm-other's token endpoint
        self.manifests: dict[str, bytes] = {}
        self.blobs: dict[str, bytes] = {}
        self.seen: list[tuple[str, str, str]] = []  # (method, path, Authorization)
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"{self.server_address[0]!s}:{self.server_address[1]}"

    def start(self) -> Hostile:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()

    def put(self, tag: str, manifest: bytes, blobs: dict[str, bytes]) -> str:
        self.manifests[tag] = self.manifests[sha(manifest)] = manifest
        self.blobs.update(blobs)
        return sha(manifest)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Hostile

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    # -- what to answer ---------------------------------------------------------------------------

    def _serve(self) -> None:
        srv, fault = self.server, self.server.fault
        srv.seen.append((self.command, self.path, self.headers.get("Authorization", "")))
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            if fault == "drip-headers":
                return self._drip(b"HTTP/1.1 200 OK\r\nX-Drip: ", headers=False)
            if self.path.startswith("/token"):
                return self._token(fault)
            if fault in ("token-huge", "token-endless", "token-drip", "realm-bad",
                         "realm-other", "bearer") and "Bearer good" not in self.headers.get(
                             "Authorization", ""):
                return self._challenge(fault)
            m = _PATH.match(self.path)
            if "/blobs/uploads/" in self.path:
                return self._upload(body)
            if m and m["kind"] == "manifests":
                return self._manifest(m["ref"], fault, body)
            if m and m["kind"] == "blobs":
                return self._blob(m["ref"], fault)
            self._send(200, b"{}")
        except OSError:
            pass  # the client hung up: what a bounded client does to an endless reply

    def _send(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.send_response(status)
        for k, v in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(k.replace("_", "-"), v)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if self.command != "HEAD":
            self.wfile.write(body)

    def _stream(self, status: int, total: int | None) -> None:
        """`total` zero bytes (None: until the client hangs up), 1 MiB at a time."""
        self.send_response(status)
        if total is not None:
            self.send_header("Content-Length", str(total))
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        piece, sent = b"0" * (1 << 20), 0
        while (total is None or sent < total) and not self.server.stopping.is_set():
            self.wfile.write(piece)
            sent += len(piece)

    def _drip(self, head: bytes, headers: bool = True, length: int = 100_000) -> None:
        """`head`, then one byte every DRIP_S until the client hangs up."""
        if headers:
            self.send_response(200)
            self.send_header("Content-Length", str(length))
            self.send_header("Connection", "close")
            self.end_headers()
        self.close_connection = True
        self.wfile.write(head)
        while not self.server.stopping.is_set():
            self.wfile.write(b"x")
            time.sleep(DRIP_S)

    def _challenge(self, fault: str | None) -> None:
        realm = {"realm-bad": "http://[::1",
                 "realm-other": f"http://{self.server.other.host if self.server.other else ''}"
                                "/token"}.get(fault or "", f"http://{self.server.host}/token")
        self._send(401, b'{"errors": []}',
                   WWW_Authenticate=f'Bearer realm="{realm}",service="hostile"')

    def _token(self, fault: str | None) -> None:
        if fault in ("token-huge", "token-endless"):
            return self._stream(200, HUGE if fault == "token-huge" else None)
        if fault == "token-drip":
            return self._drip(b'{"token": "')
        self._send(200, b'{"token": "good"}')

    def _manifest(self, ref: str, fault: str | None, body: bytes) -> None:
        if self.command == "PUT":
            return self._send(201, Docker_Content_Digest=sha(body))
        if fault in ("huge-manifest", "endless-manifest") and self.command == "GET":
            return self._stream(200, HUGE if fault == "huge-manifest" else None)
        if fault in ("huge-error", "endless-error") and self.command == "GET":
            return self._stream(404, HUGE if fault == "huge-error" else None)
        if fault == "drip-body" and self.command == "GET":
            return self._drip(b'{"schemaVersion": ')
        data = self.server.manifests.get(ref)
        if data is None:
            return self._send(404, b'{"errors": [{"code": "MANIFEST_UNKNOWN"}]}')
        self._send(200, data, Content_Type="application/vnd.oci.image.manifest.v1+json")

    def _blob(self, digest: str, fault: str | None) -> None:
        data = self.server.blobs.get(digest)
        if self.command == "HEAD" and fault == "length-bad":
            self.send_response(200)
            self.send_header("Content-Length", "lots")
            self.end_headers()
            self.close_connection = True
            return None
        if data is None:
            return self._send(404, b'{"errors": [{"code": "BLOB_UNKNOWN"}]}')
        if fault in ("redirect-bad", "redirect-file") and self.command == "GET":
            to = "http://[::1" if fault == "redirect-bad" else "file:///etc/passwd"
            return self._send(307, Location=to)
        if fault == "drip-blob" and self.command == "GET":
            return self._drip(b"", length=len(data))
        self._send(200, data, Docker_Content_Digest=digest)

    def _upload(self, body: bytes) -> None:
        if self.command == "POST":
            if self.server.fault in ("huge-error", "endless-error"):
                return self._stream(500, HUGE if self.server.fault == "huge-error" else None)
            where = "http://[::1" if self.server.fault == "location-bad" else \
                f"/v2/up/blobs/uploads/{len(self.server.seen)}"
            return self._send(202, Location=where)
        digest = re.search(r"digest=(sha256%3A|sha256:)([0-9a-f]{64})", self.path)
        if self.command == "PUT" and digest:  # not kept: every push uploads again
            return self._send(201, Docker_Content_Digest="sha256:" + digest[2])
        self._send(202, Location=self.path)


def tls_drip() -> Iterator[str]:
    """A TCP server on loopback for an `https://` client: it answers the ClientHello with the
    header of a 16 KiB TLS record and then drips its body one byte every DRIP_S, so the TLS
    handshake never ends. Yields its host:port."""
    import socket

    stop = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))

    def drip(conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(b"\x16\x03\x03\x40\x00")
                while not stop.is_set():
                    conn.sendall(b"\x00")
                    time.sleep(DRIP_S)
            except OSError:
                pass

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()


def shapes() -> dict[str, tuple[bytes, dict[str, bytes]]]:
    """Hostile manifests by tag: wrong JSON shapes, deep nesting, clashing file paths."""
    good, blobs = artifact(ONNX_FILES)

    def edited(change: Any) -> tuple[bytes, dict[str, bytes]]:
        doc = json.loads(good)
        change(doc)
        return json.dumps(doc).encode(), blobs

    deep = b"[" * 100_000 + b"]" * 100_000
    inner_manifest, _ = artifact(ONNX_FILES)
    doc = json.loads(inner_manifest)  # the bundle manifest layer swapped for `deep`
    old = next(d for d in doc["layers"] if d["annotations"][FILEPATH] == "manifest.json")
    old.update(digest=sha(deep), size=len(deep))
    doc["annotations"][BUNDLE_MANIFEST] = sha(deep)
    return {
        "annotations-list": edited(lambda d: d.update(annotations=["a", "b"])),
        "layers-object": edited(lambda d: d.update(layers={"a": 1})),
        "layers-number": edited(lambda d: d.update(layers=7)),
        "layer-annotations-number": edited(lambda d: d["layers"][0].update(annotations=5)),
        "layer-a-string": edited(lambda d: d["layers"].append("sha256:00")),
        "top-level-list": (b"[1, 2]", {}),
        "deep-nesting": (b'{"layers": ' + deep + b"}", {}),
        "inner-deep": (json.dumps(doc).encode(), {**blobs, sha(deep): deep}),
        "clash": artifact({**ONNX_FILES, "zz": b"1", "zz/x": b"2"}),
        "dot-path": artifact({**ONNX_FILES, "a": b"1", "./a": b"1"}),
    }


FILEPATH = "org.cncf.model.filepath"
BUNDLE_MANIFEST = "dev.modelkiln.bundle.manifest.digest"


def serve(bind: str = "127.0.0.1") -> Iterator[Hostile]:
    """A started server with a valid onnx artifact under the tag `good` and the `shapes()`
    under theirs, and a second server as `other` (the foreign token realm); both stopped at
    the end (for a pytest fixture)."""
    srv, other = Hostile(bind).start(), Hostile(bind).start()
    srv.other = other
    srv.put("good", *artifact(ONNX_FILES))
    for tag, (manifest, blobs) in shapes().items():
        srv.put(tag, manifest, blobs)
    try:
        yield srv
    finally:
        srv.stop()
        other.stop()


# -- the cases ---------------------------------------------------------------------------------

class Case(NamedTuple):
    """One hostile case: `kind` (bootstrap or publish) against `tag` with `fault` on; a refusal
    must name `mention` (and never blame `blame_not`); `expect` "ok" for a case that must work."""

    name: str
    kind: str
    fault: str | None
    tag: str
    mention: str
    expect: str = "refused"
    blame_not: str = "REGISTRY_RUNTIME_DIR"


_LARGER, _URL = "larger than", "not a usable URL"
_BOOT = [("huge-manifest", "good", _LARGER), ("endless-manifest", "good", _LARGER),
         ("huge-error", "good", "HTTP 404"), ("endless-error", "good", "HTTP 404"),
         ("token-huge", "good", "token answer is larger"),
         ("token-endless", "good", "token answer is larger"),
         ("token-drip", "good", "REGISTRY_FETCH_TIMEOUT"),
         ("drip-headers", "good", "REGISTRY_FETCH_TIMEOUT"),
         ("drip-body", "good", "REGISTRY_FETCH_TIMEOUT"),
         ("drip-blob", "good", "REGISTRY_FETCH_TIMEOUT"),
         ("redirect-bad", "good", _URL), ("redirect-file", "good", "redirect"),
         ("realm-bad", "good", _URL)]
_PUB = [("huge-manifest", "good", _LARGER), ("endless-manifest", "good", _LARGER),
        ("huge-error", "v1", "HTTP 500"), ("endless-error", "v1", "HTTP 500"),
        ("token-huge", "v1", "token answer is larger"),
        ("token-endless", "v1", "token answer is larger"),
        ("token-drip", "v1", "KILN_OCI_TIMEOUT"), ("drip-headers", "v1", "KILN_OCI_TIMEOUT"),
        ("drip-body", "good", "KILN_OCI_TIMEOUT"), ("realm-bad", "v1", _URL),
        ("location-bad", "v1", "malformed URL"), ("length-bad", "v1", "not a number")]
_SHAPES = {"annotations-list": "annotations", "layers-object": "layer",
           "layers-number": "'layers' is not a list", "layer-annotations-number": "layer 0",
           "layer-a-string": "layer 5", "top-level-list": "manifest is not",
           "deep-nesting": "nested too deeply", "inner-deep": "nested too deeply",
           "clash": "clash", "dot-path": "not a safe relative file path"}
CASES = (
    [Case(f"bootstrap {f}", "bootstrap", f, t, m) for f, t, m in _BOOT]
    + [Case(f"bootstrap {t}", "bootstrap", None, t, m) for t, m in _SHAPES.items()]
    + [Case("bootstrap realm-other", "bootstrap", "realm-other", "good", "", "ok")]
    + [Case(f"publish {f}", "publish", f, t, m) for f, t, m in _PUB]
    + [Case(f"publish {t}", "publish", None, t, "nested too deeply" if t == "deep-nesting"
            else "manifest is not") for t in ("deep-nesting", "top-level-list")]
    + [Case("publish realm-other", "publish", "realm-other", "v1", "", "ok")]
)


class Outcome(NamedTuple):
    outcome: str  # ok | refused | traceback | hang
    message: str
    maxrss_mib: float
    seconds: float
    wrong: str | None  # why the outcome is a wrong one (a broken promise), else None


def setup(srv: Hostile, root: Path) -> dict[str, str]:
    """The environment every case runs with: a runtime dir holding the good artifact as
    `current`, a docker config with credentials for `srv`, short deadlines."""
    import base64
    import os

    from modelkiln.runtime import bootstrap

    (root / "docker").mkdir(parents=True, exist_ok=True)
    secret = base64.b64encode(b"ann:s3cret").decode()
    (root / "docker" / "config.json").write_text(json.dumps({"auths": {srv.host: {
        "auth": secret}}}))
    layout(root / "layout")
    env = {"MODEL_BACKEND": "onnx", "REGISTRY_RUNTIME_DIR": str(root / "rt"),
           "REGISTRY_FETCH_TIMEOUT": "3", "KILN_OCI_TIMEOUT": "3",
           "DOCKER_CONFIG": str(root / "docker"), "PATH": os.environ.get("PATH", "")}
    srv.fault = None
    bootstrap({**env, "MODEL_BUNDLE_OCI_REF": f"{srv.host}/models/x:good"})
    return env


def current(env: dict[str, str]) -> str | None:
    link = Path(env["REGISTRY_RUNTIME_DIR"]) / "onnx" / "current"
    return str(link.readlink()) if link.is_symlink() else None


def run_case(srv: Hostile, case: Case, env: dict[str, str], root: Path,
             timeout: float = 60.0) -> Outcome:
    """Run one case in a child process and judge it (see Case)."""
    before = current(env)
    other = srv.other
    if other is not None:
        other.seen.clear()
    srv.fault = case.fault
    try:
        spec: dict[str, Any] = {"env": {**env, "MODEL_BUNDLE_OCI_REF":
                                        f"{srv.host}/models/x:{case.tag}"},
                                "layout": str(root / "layout"),
                                "target": f"{srv.host}/models/x:{case.tag}"}
        got = drive(case.kind, spec, timeout=timeout)
    finally:
        srv.fault = None
    wrong = None
    message = str(got["message"])
    if got["outcome"] in ("ok", "refused") and got["outcome"] != case.expect:
        wrong = f"{got['outcome']}, expected {case.expect}"
    elif got["outcome"] == "refused" and (case.mention not in message
                                          or case.blame_not in message):
        wrong = f"refused, but the message does not name {case.mention!r}: {message[:160]}"
    elif got["outcome"] == "refused" and "\n" in message.strip():
        wrong = "refused in more than one line"
    elif other is not None and any(auth for _, _, auth in other.seen):
        wrong = "sent the registry's credentials to a token realm on another origin"
    elif case.kind == "bootstrap" and current(env) != before:
        wrong = f"current moved from {before} to {current(env)}"
    return Outcome(str(got["outcome"]), message, float(got["maxrss_mib"]),
                   float(got["seconds"]), wrong)


# -- the child process ------------------------------------------------------------------------------

def drive(kind: str, spec: dict[str, Any], timeout: float = 60.0,
          env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `kind` ("bootstrap" or "publish") with `spec` in a child: {"outcome": "ok" |
    "refused" | "traceback" | "hang", "message", "maxrss_mib", "seconds"}."""
    start = time.monotonic()
    try:
        done = subprocess.run([sys.executable, __file__, kind, json.dumps(spec)], env=env,
                              capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"outcome": "hang", "message": f"no answer in {timeout:g} s", "maxrss_mib": 0,
                "seconds": time.monotonic() - start}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"outcome": "traceback", "message": (done.stderr or done.stdout)[-2000:],
                "maxrss_mib": 0, "seconds": time.monotonic() - start}
    got: dict[str, Any] = json.loads(lines[-1])
    return got


def _child(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    import os
    import resource
    import traceback

    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    os.environ.update(spec.get("env", {}))
    from modelkiln.errors import KilnError

    start = time.monotonic()
    try:
        if kind == "bootstrap":
            from modelkiln.runtime import bootstrap

            bootstrap(dict(os.environ))
        else:
            from modelkiln.publish.oci import push

            push(Path(spec["layout"]), "model", spec["target"])
        outcome, message = "ok", ""
    except KilnError as exc:
        outcome, message = "refused", f"kiln: {exc}"
    except BaseException:  # what the reliability row counts as a traceback
        outcome, message = "traceback", traceback.format_exc()[-2000:]
    return {"outcome": outcome, "message": message, "seconds": time.monotonic() - start,
            "maxrss_mib": _peak_rss_mib()}


def _peak_rss_mib() -> float:
    """This process's own peak RSS: VmHWM, kept per address space. getrusage's ru_maxrss is
    carried across exec from the forking parent, so a child of a large pytest process would
    report the parent's size."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1], json.loads(sys.argv[2]))))
