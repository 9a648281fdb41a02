"""The operator's web page in a real headless Chromium, against a mesh of real agents on loopback.

Playwright for Python drives the system's Chromium (Debian's ``chromium``; never a browser
download). Skipped with a reason when either is absent.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

from meshagent.transport.udp import port_free
from meshagent.trust import keystore
from tests.meshagent.api.agents import OPERATOR_TOKEN, make_bundle, start, wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[3]
BASE = f"127.83.{os.getpid() % 250}"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.slow
def test_page_shows_the_mesh_with_a_token_and_follows_a_kill(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the test extra) is not installed")
    if not Path(CHROMIUM).exists():
        pytest.skip("no system Chromium (apt-get install chromium); the page test needs a real browser")
    hosts = [f"{BASE}.{i + 1}" for i in range(3)]
    if not all(port_free(h) and port_free(h, 7947) for h in hosts):
        pytest.skip(f"ports 7946/7947 are taken on {BASE}.x")
    ca = keystore.ca_init(tmp_path / "ca")
    procs = []
    try:
        for i, host in enumerate(hosts):
            cfg = make_bundle(tmp_path, ca, f"node-{i}", host, [] if i == 0 else [f"{hosts[0]}:7946"],
                              transformer="tx-1" if i < 2 else "tx-2")
            procs.append(start(cfg, tmp_path / f"node-{i}.log"))
        url = f"http://{hosts[0]}:7947/"
        with tempfile.TemporaryDirectory() as profile, sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, args=ARGS, headless=True,
                viewport={"width": 412, "height": 915}, device_scale_factor=1,
                bypass_csp=True)  # the test's own probes are evaluated strings  # a phone's width
            page = browser.new_page()
            assert wait_for(lambda: _reachable(page, url), 20), (tmp_path / "node-0.log").read_text()[-2000:]
            # without a token: the login, and no data
            assert page.locator("#login").is_visible()
            assert not page.locator("#data").is_visible()
            assert page.locator("#members tbody tr").count() == 0
            # a wrong token is refused and shows nothing
            page.fill("#token", "not-the-token")
            page.click("button[type=submit]")
            page.wait_for_selector("#login:not([hidden])")
            page.wait_for_function("document.getElementById('error').textContent.includes('refused')")
            # with the operator token: the whole mesh, live
            page.fill("#token", OPERATOR_TOKEN)
            page.click("button[type=submit]")
            page.wait_for_function("document.querySelectorAll('#members tbody tr').length === 3", timeout=20000)
            page.wait_for_function(
                "[...document.querySelectorAll('#members td.state')].every(td => td.textContent.startsWith('alive'))",
                timeout=20000)
            page.wait_for_selector("#live.on", timeout=10000)
            page.wait_for_function("document.querySelectorAll('#transformers tbody tr').length === 2", timeout=20000)
            page.wait_for_function(
                "[...document.querySelectorAll('#transformers tbody td')].some(td => td.textContent.includes('kW'))",
                timeout=20000)
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            if os.environ.get("MESHAGENT_SAVE_SCREENSHOT"):
                shutil.copy(tmp_path / "page.png", ROOT / "docs" / "img" / "operator-page.png")
            # kill node-2: the page says so within seconds, pushed by /v1/events
            procs[2].send_signal(signal.SIGKILL)
            page.wait_for_function(
                "(() => { const r = document.querySelector('#members tr[data-node=\"node-2\"] td.state');"
                " return r && !r.textContent.startsWith('alive'); })()", timeout=15000)
            browser.close()
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait(timeout=10)


def _reachable(page, url: str) -> bool:
    try:
        page.goto(url, timeout=2000)
        return True
    except Exception:
        return False
