"""A `kiln ui` server over a test project, as a real subprocess on a free loopback port."""
from __future__ import annotations

import re
import signal
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from helpers import BIN


@dataclass
class Site:
    root: Path  # the project (dist/, published/, configs/)
    store: Path
    registry: Path
    env: dict[str, str]


@dataclass
class Server:
    process: subprocess.Popen[str]
    url: str  # http://127.0.0.1:PORT/

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(site: Site, *options: str, env: dict[str, str] | None = None) -> Server:
    """`kiln ui --port 0 OPTIONS` in the project; waits for its "serving" line (the port)."""
    process = subprocess.Popen([str(BIN / "kiln"), "ui", "--port", "0", *options],
                               cwd=site.root, env={**site.env, **(env or {})}, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    first = process.stdout.readline()
    found = re.search(r"on http://(\S+?):(\d+)/", first)
    if found is None:
        rest = process.communicate(timeout=30)[0]
        raise AssertionError(f"kiln ui did not start: {first}{rest}")
    host = "127.0.0.1" if found.group(1) in ("0.0.0.0", "[::]") else found.group(1)
    return Server(process, f"http://{host}:{found.group(2)}/")


def request(url: str, data: dict[str, str] | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, str]:
    """(status, body) of a GET (or a form POST with `data`), without following redirects."""
    body = None if data is None else "&".join(f"{k}={v}" for k, v in data.items()).encode()

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    req = urllib.request.Request(url, data=body, headers=headers or {},
                                 method="GET" if data is None else "POST")
    try:
        with opener.open(req, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


__all__ = ["Server", "Site", "request", "start_server"]
