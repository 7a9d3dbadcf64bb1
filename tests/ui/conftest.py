"""`kiln ui` over a real built project: one tiny bundle built once per session (real doit), then
per test a copy published into its own store and registry, served by the real `kiln ui` on a free
loopback port, and driven by Debian's chromium through its chromedriver (selenium, headless).

The second registry entry is a real packaged bundle (tests/distfactory.py: the package stage's
manifest and tarball writers over small files) whose label is markup, recorded in the discovered
layer the way a publish records one.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import BIN, REPO, SPEC, Project, make_project
from uisite import Server, Site, start_server

XSS = "<img src=x onerror=alert(1)>"
STORE_SPEC = SPEC + """\
publish:
  store: {{root: "${{MODEL_STORE_ROOT}}", agent: tiny}}
registry: {{roles: [triage], capabilities: [multi-label]}}
"""


def _browser_paths() -> tuple[str, str] | None:
    found = [shutil.which(n) for n in ("chromium", "chromedriver")]
    return (found[0], found[1]) if found[0] and found[1] else None


@pytest.fixture(scope="session")
def ui_built(tmp_path_factory: pytest.TempPathFactory, tiny_inputs: Path) -> Project:
    """The tiny project after one real `doit build:tiny` (shared; tests publish copies)."""
    project = make_project(tmp_path_factory.mktemp("ui-proj"), tiny_inputs, spec=STORE_SPEC)
    built = project.doit("build:tiny")
    assert built.code == 0, built.output
    return project


@pytest.fixture(scope="session")
def xss_dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A packaged bundle whose one label is markup (thresholds, metrics and label order)."""
    from distfactory import bundle_files, make_dist

    files = bundle_files("pytorch", seed=3, weights=2000)
    files["thresholds.json"] = json.dumps({XSS: 0.42}).encode()
    files["label_order.json"] = json.dumps([XSS]).encode()
    files["threshold_metrics.json"] = json.dumps({XSS: {
        "source": "f1-optimal", "f1": 0.8, "precision": 0.75, "recall": 0.857, "support": 7}}).encode()
    return make_dist(tmp_path_factory.mktemp("xss"), name="notes", version="2.0.0", files=files)


@pytest.fixture
def site(ui_built: Project, xss_dist: Path, tmp_path: Path) -> Site:
    """A private copy of the built project, published (file://, store, registry) by the real
    `kiln publish`, with a curated layer and the markup-labelled entry recorded."""
    from modelkiln.registry import Artifacts, RegistryEntry, record_discovered

    root = tmp_path / "proj"
    shutil.copytree(ui_built.root, root, symlinks=True, copy_function=shutil.copy2)
    store = tmp_path / "store"
    env = {**os.environ, "MODEL_STORE_ROOT": str(store)}
    env.pop("KILN_REGISTRY_DIR", None)
    done = subprocess.run([str(BIN / "kiln"), "publish", "--to", "local"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    configs = root / "configs"
    (configs / "model_registry.curated.json").write_text(json.dumps({
        "schema_version": 1, "comment": "reviewed",
        "entries": [{"name": "tiny-pytorch", "backend": "pytorch",
                     "description": "Tiny triage model <script>alert(2)</script>",
                     "roles": ["triage", "local-dev"], "capabilities": ["multi-label"],
                     "served_model_id": "tiny"}]}, indent=2) + "\n")
    record_discovered(RegistryEntry("notes-pytorch", backend="pytorch", version="2.0.0",
                                    roles=("notes",), capabilities=("single-label",),
                                    artifacts=Artifacts(local=str(xss_dist))),
                      registry_dir=configs)
    return Site(root, store, configs, env)


@pytest.fixture
def serve(site: Site) -> Iterator[Callable[..., Server]]:
    """Start `kiln ui` on the site (options as given); every server is stopped afterwards."""
    started: list[Server] = []

    def start(*options: str, env: dict[str, str] | None = None) -> Server:
        server = start_server(site, *options, env=env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless chromium from Debian's packages, through its own chromedriver (no download)."""
    paths = _browser_paths()
    if paths is None and os.environ.get("CI") == "true":  # CI installs both (.ci/run)
        pytest.fail("chromium and chromium-driver are missing; .ci/run installs them")
    if paths is None:
        pytest.skip("chromium and chromium-driver not installed (apt-get install chromium "
                    "chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1100", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=paths[1]), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="session")
def shots() -> Path:
    """Where screenshots go: $KILN_TEST_ARTIFACTS/ui, else build/test-artifacts/ui."""
    base = os.environ.get("KILN_TEST_ARTIFACTS")
    where = Path(base) / "ui" if base else REPO / "build" / "test-artifacts" / "ui"
    where.mkdir(parents=True, exist_ok=True)
    return where
