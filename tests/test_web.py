"""The node's web page in real headless Chromium, driven through chromedriver's W3C WebDriver
HTTP API with ``requests`` (no extra test dependencies).

Skipped only when Chromium or chromedriver is missing (CI installs both: .ci/apt-packages).
``SDHT_SCREENSHOT=PATH`` also saves the screenshot there (docs/screenshot-node.png is made so).
"""
from __future__ import annotations

import base64
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

import sdht
from sdht.cli.localcluster import stop_group

from conftest import free_port, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C WebDriver element reference key

pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="needs chromium and chromedriver (Debian: chromium, "
                                       "chromium-driver)")


class Browser:
    """A headless Chromium session behind a chromedriver process of our own."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.log = open(workdir / "chromedriver.log", "wb")
        self.proc = subprocess.Popen([CHROMEDRIVER, f"--port={self.port}"], stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.base = f"http://127.0.0.1:{self.port}"
        wait_for(self._ready, 20, what="chromedriver to serve")
        options = {"binary": CHROMIUM, "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-dev-shm-usage", "--window-size=1200,1100",
            f"--user-data-dir={workdir / 'chromium-profile'}"]}
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome",
                                                 "goog:chromeOptions": options}}}
        self.session = self._call("POST", "/session", caps, timeout=60)["sessionId"]

    def _ready(self) -> bool:
        try:
            return requests.get(f"{self.base}/status", timeout=1).json()["value"]["ready"]
        except (requests.RequestException, ValueError, KeyError):
            return False

    def _call(self, method: str, path: str, body: dict | None = None, timeout: float = 20):
        resp = requests.request(method, self.base + path, json=body, timeout=timeout)
        value = resp.json()["value"]
        assert resp.ok, f"WebDriver {method} {path}: {value}"
        return value

    def cmd(self, method: str, path: str, body: dict | None = None):
        return self._call(method, f"/session/{self.session}{path}", body)

    def find(self, css: str) -> str:
        found = self.cmd("POST", "/element", {"using": "css selector", "value": css})
        assert isinstance(found, dict) and ELEMENT in found, f"no element {css!r}: {found}"
        return found[ELEMENT]

    def type(self, css: str, text: str) -> None:
        element = self.find(css)
        self.cmd("POST", f"/element/{element}/clear", {})
        self.cmd("POST", f"/element/{element}/value", {"text": text})

    def click(self, css: str) -> None:
        self.cmd("POST", f"/element/{self.find(css)}/click", {})

    def text(self, css: str) -> str:
        return self.cmd("GET", f"/element/{self.find(css)}/text")

    def attribute(self, css: str, name: str) -> str | None:
        return self.cmd("GET", f"/element/{self.find(css)}/attribute/{name}")

    def count(self, css: str) -> int:
        return len(self.cmd("POST", "/elements", {"using": "css selector", "value": css}))

    def screenshot(self) -> bytes:
        return base64.b64decode(self.cmd("GET", "/screenshot"))

    def close(self) -> None:
        try:
            self._call("DELETE", f"/session/{self.session}")
        finally:
            stop_group(self.proc)
            self.log.close()


@pytest.fixture
def browser(tmp_path):
    b = Browser(tmp_path)
    yield b
    b.close()


def test_page_sets_and_reads_a_key_through_the_ring(start_node, browser, tmp_path):
    nodes = [start_node(workers=1) for _ in range(4)]
    with sdht.Ring([nodes[0].id]) as ring:
        for n in nodes:
            ring.join(n.id)
        for i in range(40):
            ring.set(f"seed-{i}", i)

    browser.cmd("POST", "/url", {"url": nodes[0].url + "/"})
    # The ring is drawn: every node's tokens, this node's highlighted in the table.
    wait_for(lambda: browser.count("#ring circle.token") == 4 * 128, 15, what="the ring drawn")
    assert nodes[0].id in browser.text("#members tr.self")
    assert "4 of 4 nodes up" in browser.text("#summary")

    browser.type("#key", "greeting")
    browser.type("#value", '{"hello": "world", "n": 42}')
    browser.click("#set")
    wait_for(lambda: browser.attribute("#result", "data-state") == "done", 15, what="the set")
    assert "stored greeting" in browser.text("#result")

    browser.type("#value", "")
    browser.click("#get")
    wait_for(lambda: browser.attribute("#result", "data-state") == "done"
             and "greeting =" in browser.text("#result"), 15, what="the get")
    assert '"hello": "world"' in browser.text("#value-out")
    replicas = browser.text("#replicas")
    assert replicas.count("holds it") == 3, replicas
    with sdht.connect(nodes[1].id) as other:
        assert other.get("greeting") == {"hello": "world", "n": 42}

    shot = browser.screenshot()
    assert shot.startswith(b"\x89PNG")
    (tmp_path / "screenshot-node.png").write_bytes(shot)
    if os.environ.get("SDHT_SCREENSHOT"):
        Path(os.environ["SDHT_SCREENSHOT"]).write_bytes(shot)
