"""`kiln ui` in a real browser: pages, actions, escaping and the guards around the actions."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers import BIN
from uisite import Server, Site, request

pytestmark = pytest.mark.slow
XSS = "<img src=x onerror=alert(1)>"


def _by(kind: str) -> Any:
    from selenium.webdriver.common.by import By

    return getattr(By, kind)


def _no_alert(browser: Any) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018  (raises when no alert is open)


def _click(browser: Any, element_id: str) -> None:
    """Press a form's button and wait for the page the POST redirects to."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    page = browser.find_element(_by("TAG_NAME"), "html")
    browser.find_element(_by("ID"), element_id).click()
    WebDriverWait(browser, 120).until(expected_conditions.staleness_of(page))
    WebDriverWait(browser, 30).until(
        lambda b: b.execute_script("return document.readyState") == "complete")


def _text(browser: Any, element_id: str) -> str:
    return str(browser.find_element(_by("ID"), element_id).text)


def test_registry_lists_entries_and_filters(serve: Callable[..., Server], browser: Any,
                                            shots: Path) -> None:
    server = serve()
    browser.get(server.url)
    rows = browser.find_elements(_by("CSS_SELECTOR"), "tr.entry")
    names = [r.get_attribute("data-name") for r in rows]
    assert names == ["notes-pytorch", "tiny-pytorch"]
    tiny = rows[1].text
    assert "curated + discovered" in tiny and "1.0.0" in tiny and "pytorch" in tiny
    assert "multi-label-classification" in tiny and "unlocked" in tiny and "unsigned" in tiny
    # the curated description is markup, shown as text
    assert "<script>alert(2)</script>" in tiny
    assert browser.find_elements(_by("CSS_SELECTOR"), "main script") == []
    browser.save_screenshot(str(shots / "registry.png"))
    # filter by role, then by capability (the runbook's `list --role`)
    browser.get(server.url + "?role=local-dev")
    assert [r.get_attribute("data-name") for r in
            browser.find_elements(_by("CSS_SELECTOR"), "tr.entry")] == ["tiny-pytorch"]
    browser.get(server.url + "?capability=single-label")
    assert [r.get_attribute("data-name") for r in
            browser.find_elements(_by("CSS_SELECTOR"), "tr.entry")] == ["notes-pytorch"]


def test_entry_page_shows_store_files_metrics(serve: Callable[..., Server], browser: Any,
                                              site: Site, shots: Path) -> None:
    server = serve()
    browser.get(server.url + "entry/tiny-pytorch")
    versions = _text(browser, "versions")
    assert "1.0.0" in versions and "current" in versions and "retained" in versions
    files = _text(browser, "files")
    assert "bundle/model.safetensors" not in files and "model.safetensors" in files
    assert "thresholds.json" in files
    metrics = browser.find_elements(_by("CSS_SELECTOR"), "#metrics tbody tr")
    labels = [m.find_element(_by("CSS_SELECTOR"), "td.label").text for m in metrics]
    assert labels == ["alpha", "beta", "gamma", "delta"]
    figures = [m.find_elements(_by("CSS_SELECTOR"), "td") for m in metrics]
    drawn = sum(cells[i].text != "-" for cells in figures for i in (1, 3, 4, 5))
    assert drawn >= 4  # every label has a threshold; measured labels have F1, precision, recall
    bars = browser.find_elements(_by("CSS_SELECTOR"), "#chart rect.bar")
    assert len(bars) == drawn  # one bar per figure in the table
    refs = _text(browser, "refs")
    assert str(site.store / "tiny" / "versions" / "1.0.0") in refs and "file://" in refs
    browser.save_screenshot(str(shots / "entry.png"))


def test_compare_two_entries(serve: Callable[..., Server], browser: Any, shots: Path) -> None:
    server = serve()
    browser.get(server.url + "compare?a=tiny-pytorch&b=notes-pytorch")
    tables = browser.find_elements(_by("CSS_SELECTOR"), "table.compare")
    assert len(tables) == 2  # thresholds and files (neither bundle has parity figures)
    thresholds = tables[0].text
    assert "alpha" in thresholds and XSS in thresholds
    changed = browser.find_elements(_by("CSS_SELECTOR"), "table.compare tr.differs")
    assert any("model.safetensors" in row.text for row in changed)
    browser.save_screenshot(str(shots / "compare.png"))


def test_verify_on_a_tampered_store_shows_drift(serve: Callable[..., Server], browser: Any,
                                                site: Site, shots: Path) -> None:
    weights = site.store / "tiny" / "versions" / "1.0.0" / "bundle" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))  # same size: only a re-hash sees it
    server = serve()
    browser.get(server.url)
    assert "drift" not in browser.find_element(_by("CSS_SELECTOR"),
                                               'tr[data-name="tiny-pytorch"] td.drift').text
    browser.get(server.url + "entry/tiny-pytorch")
    _click(browser, "verify")
    log = _text(browser, "log")
    assert "kiln registry verify tiny-pytorch" in log and "exit 2 (drift)" in log
    assert "changed bundle/model.safetensors" in log
    assert "hash drift" in _text(browser, "drift-badge")
    browser.save_screenshot(str(shots / "entry-drift.png"))
    browser.get(server.url)
    assert "drift" in browser.find_element(_by("CSS_SELECTOR"),
                                           'tr[data-name="tiny-pytorch"] td.drift').text
    # the CLI says the same of the same bytes
    cli = subprocess.run([str(BIN / "kiln"), "registry", "verify", "tiny-pytorch"], cwd=site.root,
                         env=site.env, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2 and "changed bundle/model.safetensors" in cli.stderr


def test_lock_then_verify_passes(serve: Callable[..., Server], browser: Any, site: Site) -> None:
    server = serve()
    browser.get(server.url + "entry/tiny-pytorch")
    assert _text(browser, "lock-state") == "unlocked"
    _click(browser, "lock")
    assert _text(browser, "lock-state") == "locked"
    assert "kiln registry lock tiny-pytorch --set-expected" in _text(browser, "log")
    _click(browser, "verify")
    log = _text(browser, "log")
    assert "exit 0 (ok)" in log and "ok tiny-pytorch aggregate=" in log
    discovered = json.loads((site.registry / "model_registry.discovered.json").read_text())
    tiny = next(e for e in discovered["entries"] if e["name"] == "tiny-pytorch")
    assert tiny["version_lock"]["locked"] is True and tiny["version_lock"]["last_verified"]
    assert (site.store / "tiny" / "pins" / "1.0.0").exists()  # a lock pins the store version
    _click(browser, "unlock")
    assert _text(browser, "lock-state") == "unlocked"


def test_import_moves_a_discovered_entry(serve: Callable[..., Server], browser: Any,
                                         site: Site, shots: Path) -> None:
    server = serve()
    browser.get(server.url + "entry/notes-pytorch")
    assert _text(browser, "layer") == "discovered"
    browser.save_screenshot(str(shots / "entry-import.png"))
    field = browser.find_element(_by("ID"), "import-description")
    field.clear()
    field.send_keys("Notes classifier")
    roles = browser.find_element(_by("ID"), "import-roles")
    roles.clear()
    roles.send_keys("notes, review")
    browser.find_element(_by("ID"), "import-metadata").send_keys('{"owner": "notes-team"}')
    _click(browser, "import")
    assert _text(browser, "layer") == "curated + discovered"
    assert browser.find_elements(_by("ID"), "import-form") == []
    curated = json.loads((site.registry / "model_registry.curated.json").read_text())
    entry = next(e for e in curated["entries"] if e["name"] == "notes-pytorch")
    assert entry == {"name": "notes-pytorch", "backend": "pytorch",
                     "description": "Notes classifier", "roles": ["notes", "review"],
                     "capabilities": ["single-label"], "metadata": {"owner": "notes-team"}}
    assert curated["comment"] == "reviewed"  # the rest of the file is kept
    listed = subprocess.run([str(BIN / "kiln"), "registry", "list", "--json",
                             "--include-non-installed"], cwd=site.root, env=site.env,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    notes = next(e for e in json.loads(listed.stdout) if e["name"] == "notes-pytorch")
    assert notes["description"] == "Notes classifier" and notes["version"] == "2.0.0"


def test_markup_label_renders_as_text(serve: Callable[..., Server], browser: Any,
                                      shots: Path) -> None:
    server = serve()
    browser.get(server.url + "entry/notes-pytorch")
    _no_alert(browser)
    labels = [e.text for e in browser.find_elements(_by("CSS_SELECTOR"), "#metrics td.label")]
    assert labels == [XSS]
    chart_labels = browser.find_elements(_by("CSS_SELECTOR"), "#chart text.label")
    assert [e.get_attribute("textContent") for e in chart_labels] == [XSS]
    assert browser.find_elements(_by("CSS_SELECTOR"), "img") == []
    assert browser.execute_script("return document.querySelectorAll('img').length") == 0
    browser.save_screenshot(str(shots / "entry-markup-label.png"))


def test_post_without_the_csrf_token_is_refused(serve: Callable[..., Server], site: Site) -> None:
    server = serve()
    before = (site.registry / "model_registry.discovered.json").read_bytes()
    status, _ = request(server.url + "entry/tiny-pytorch/lock", {"set_expected": "1"})
    assert status == 403
    status, _ = request(server.url + "entry/tiny-pytorch/lock", {"csrf": "guess"})
    assert status == 403
    assert (site.registry / "model_registry.discovered.json").read_bytes() == before
    # a page names the token; with it the same POST is done
    _, page = request(server.url + "entry/tiny-pytorch")
    token = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    status, _ = request(server.url + "entry/tiny-pytorch/lock", {"csrf": token, "set_expected": "1"})
    assert status == 303
    assert b'"locked": true' in (site.registry / "model_registry.discovered.json").read_bytes()
    # a Host that is not a loopback name (DNS rebinding) gets no answer at all
    status, _ = request(server.url, headers={"Host": "rebound.example:80"})
    assert status == 403


def test_read_only_hides_actions(serve: Callable[..., Server], browser: Any,
                                 shots: Path) -> None:
    server = serve("--read-only")
    browser.get(server.url + "entry/notes-pytorch")
    assert browser.find_elements(_by("CSS_SELECTOR"), "form[method=post]") == []
    assert browser.find_elements(_by("ID"), "actions") == []
    assert _text(browser, "read-only") == "read-only"
    browser.save_screenshot(str(shots / "entry-read-only.png"))
    status, _ = request(server.url + "entry/notes-pytorch/verify", {"csrf": "x"})
    assert status == 403


def test_non_loopback_bind_needs_a_token(serve: Callable[..., Server], site: Site) -> None:
    refused = subprocess.run([str(BIN / "kiln"), "ui", "--host", "0.0.0.0", "--port", "0"],
                             cwd=site.root, env={k: v for k, v in site.env.items()
                                                 if k != "KILN_UI_TOKEN"},
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 64
    assert "not a loopback address" in refused.stderr and "KILN_UI_TOKEN" in refused.stderr
    server = serve("--host", "0.0.0.0", env={"KILN_UI_TOKEN": "s3cret-token"})
    assert request(server.url)[0] == 401
    assert request(server.url + "?token=wrong")[0] == 401
    status, _ = request(server.url, headers={"Authorization": "Bearer s3cret-token"})
    assert status == 200
    status, _ = request(server.url + "?token=s3cret-token")
    assert status == 303  # sets the cookie and drops the token from the address
    status, body = request(server.url, headers={"Cookie": "kiln_ui_token=s3cret-token"})
    assert status == 200 and "tiny-pytorch" in body


def test_the_command_documents_itself() -> None:
    done = subprocess.run([str(BIN / "kiln"), "ui", "--help"], capture_output=True, text=True,
                          timeout=60, env={**os.environ})
    assert done.returncode == 0
    assert "--read-only" in done.stdout and "kiln ui --port 8800 --read-only" in done.stdout


def test_compare_two_store_versions(serve: Callable[..., Server], browser: Any, site: Site,
                                    shots: Path) -> None:
    from modelkiln.store import ModelStore

    store = ModelStore(site.store)
    current = site.store / "tiny" / "versions" / "1.0.0"
    with store.stage_new("tiny", "0.9.0") as tmp:  # an older version: alpha's cut differs
        shutil.copytree(current / "bundle", tmp / "bundle")
        thresholds = json.loads((tmp / "bundle" / "thresholds.json").read_text())
        thresholds["alpha"] = 0.125
        (tmp / "bundle" / "thresholds.json").write_text(json.dumps(thresholds))
    store.finalize("tiny", "0.9.0", activate=False)
    server = serve()
    browser.get(server.url + "entry/tiny-pytorch")
    versions = _text(browser, "versions")
    assert "0.9.0" in versions and "1.0.0" in versions
    browser.find_element(_by("LINK_TEXT"), "compare with this entry").click()
    assert "tiny-pytorch%400.9.0" in browser.current_url or "tiny-pytorch@0.9.0" in browser.current_url
    changed = [r.text for r in browser.find_elements(_by("CSS_SELECTOR"), "tr.differs")]
    assert any(line.startswith("alpha 0.125") for line in changed), changed
    assert any(line.startswith("thresholds.json") for line in changed), changed
    assert not any(line.startswith("beta") for line in changed), changed
    browser.save_screenshot(str(shots / "compare-versions.png"))


def test_import_with_a_bad_field_writes_nothing(serve: Callable[..., Server], site: Site) -> None:
    server = serve()
    curated = site.registry / "model_registry.curated.json"
    before = curated.read_bytes()
    _, page = request(server.url + "entry/notes-pytorch")
    token = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    status, _ = request(server.url + "entry/notes-pytorch/import",
                        {"csrf": token, "backend": "Not+A+Backend", "roles": "notes"})
    assert status == 303
    _, page = request(server.url + "entry/notes-pytorch")
    assert "exit 3 (spec)" in page and "model_registry.curated.json" in page
    assert curated.read_bytes() == before
    assert [p.name for p in site.registry.glob(".model_registry*.tmp")] == []
    status, _ = request(server.url + "entry/notes-pytorch/import",
                        {"csrf": token, "metadata": "%5B1%5D"})  # a list, not an object
    _, page = request(server.url + "entry/notes-pytorch")
    assert "exit 64 (usage)" in page and "metadata: a JSON object is needed" in page
    assert curated.read_bytes() == before
    # importing an entry that is already curated is refused the same way (usage)
    status, _ = request(server.url + "entry/tiny-pytorch/import", {"csrf": token})
    _, page = request(server.url + "entry/tiny-pytorch")
    assert "exit 64 (usage)" in page and curated.read_bytes() == before


def test_a_broken_registry_is_a_page_not_a_traceback(serve: Callable[..., Server],
                                                      site: Site) -> None:
    server = serve()
    (site.registry / "model_registry.curated.json").write_text('{"schema_version": 1, '
                                                               '"entries": [{"name": 5}]}')
    status, page = request(server.url)
    assert status == 500
    assert "model_registry.curated.json:1:" in page and "Traceback" not in page


def test_signature_status_and_provenance(serve: Callable[..., Server], browser: Any,
                                         site: Site, tmp_path: Path) -> None:
    def kiln(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "kiln"), *args], cwd=site.root, env=site.env,
                              capture_output=True, text=True, timeout=120)

    assert kiln("keygen", "--dir", str(tmp_path), "--name", "pub").returncode == 0
    published = site.root / "published" / "tiny" / "1.0.0" / "pytorch"
    signed = kiln("sign", "--key", str(tmp_path / "pub.key"), str(published))
    assert signed.returncode == 0, signed.stderr
    server = serve()  # no trusted keys: signed, not checked
    browser.get(server.url)
    cell = browser.find_element(_by("CSS_SELECTOR"), 'tr[data-name="tiny-pytorch"] td.signature')
    assert cell.text.startswith("signed (not checked")
    browser.get(server.url + "entry/tiny-pytorch")
    assert "urn:modelkiln:builder:local" in _text(browser, "provenance")
    trusted = serve(env={"REGISTRY_TRUSTED_KEYS": str(tmp_path / "pub.pub")})
    browser.get(trusted.url)
    cell = browser.find_element(_by("CSS_SELECTOR"), 'tr[data-name="tiny-pytorch"] td.signature')
    assert cell.text.startswith("signed by ") and cell.text.endswith("(checked)")
    browser.get(trusted.url + "entry/tiny-pytorch")
    _click(browser, "verify")
    log = _text(browser, "log")
    assert "exit 0 (ok)" in log and "signed_by=" in log
