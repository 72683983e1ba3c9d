"""The node's web page in real headless Chromium, driven through chromedriver's W3C WebDriver
HTTP API with ``requests`` (no extra test dependencies).

The first-paint test runs headless Chromium alone (whichever Chromium-family browser is
installed); the WebDriver test also needs chromedriver. Each is skipped only when what it needs
is missing (CI installs both: .ci/apt-packages), and the run's summary says so
(tests/conftest.py). The page's server side (initial state, log, links) is tested in process.
``SDHT_SCREENSHOT=PATH`` also saves the screenshot there (docs/screenshot-node.png is made so).
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import requests

import sdht
from sdht.cli.processes import stop_group

from conftest import free_port, wait_for

#: Whatever Chromium-family browser is installed: the first-paint test needs only the browser,
#: the WebDriver test also chromedriver.
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome",
                                                "google-chrome-stable", "chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C WebDriver element reference key

needs_browser = pytest.mark.skipif(
    not CHROMIUM, reason="needs a Chromium browser (Debian: apt-get install chromium)")
needs_webdriver = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs chromium and chromedriver (Debian: apt-get install chromium chromium-driver)")


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
            "--disable-sync", "--disable-dev-shm-usage", "--window-size=1200,1700",
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


@needs_webdriver
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


# -- issue 17: the page as nasci4 had it ------------------------------------------------------

def initial_state(html: str) -> dict:
    found = re.search(r'<script id="initial-state" type="application/json">(.*?)</script>',
                      html, re.S)
    assert found, "the page carries no initial state"
    return json.loads(found.group(1))


def test_the_page_links_every_member_and_logs_writes_syncs_membership_and_errors(
        inprocess_cluster):
    ring, apps = inprocess_cluster(3)
    ring.set("logged-key", {"n": 1})
    node_id = next(iter(apps))
    client = apps[node_id].test_client()
    assert client.post("/v1/sync/pass", json={"rounds": 2, "differences": 5}).status_code == 200
    bad = client.put("/v1/record", data=b"\xc1", headers={"Content-Type": "application/x-msgpack"})
    assert bad.status_code == 400

    html = client.get("/").get_data(as_text=True)
    for other in apps:
        assert f'href="http://{other}/"' in html
    assert "loading" not in html
    state = initial_state(html)
    assert {n["id"] for n in state["ring"]["nodes"]} == set(apps)
    assert all(len(n["positions"]) == 128 for n in state["ring"]["nodes"])
    assert state["health"]["node"] == node_id and state["health"]["records"] >= 1
    assert state["log"] and state["log"][0]["kind"] == "error"   # the newest, first

    events = client.get("/v1/ui/log?limit=200").get_json()["events"]
    assert [e["t"] for e in events] == sorted((e["t"] for e in events), reverse=True)
    texts = {e["kind"]: [] for e in events}
    for e in events:
        texts[e["kind"]].append(e["text"])
    assert any("'logged-key'" in t and "stored" in t for t in texts["write"]), texts
    assert any("new ring, epoch" in t for t in texts["membership"]), texts
    assert any("2 rounds, 5 differences" in t for t in texts["sync"]), texts
    assert any("PUT /v1/record answered 400" in t for t in texts["error"]), texts
    assert client.get("/v1/ui/log?limit=0").status_code == 400


def test_the_log_is_bounded_and_newest_first(tmp_path):
    from storage import eventlog
    for i in range(3000):
        eventlog.append(str(tmp_path), "write", f"event {i}", max_bytes=8192)
    sizes = [p.stat().st_size for p in tmp_path.iterdir()]
    assert len(sizes) == 2 and all(size <= 8192 + 200 for size in sizes)
    newest = eventlog.recent(str(tmp_path), 5)
    assert [e["text"] for e in newest] == [f"event {i}" for i in range(2999, 2994, -1)]
    assert len(eventlog.recent(str(tmp_path), 10_000)) <= eventlog.MAX_EVENTS


def png_pixels(png: bytes) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB or RGBA PNG (what Chromium writes): width, height, rows of pixels."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        data = png[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", data)
        elif kind == b"IDAT":
            idat += data
        pos += 12 + length
    width, height, depth, colour = header[:4]
    assert depth == 8 and colour in (2, 6), header
    bpp = 3 if colour == 2 else 4
    raw, stride, rows, prev = zlib.decompress(idat), width * bpp, [], bytearray(width * bpp)
    for y in range(height):
        start = y * (stride + 1)
        filt, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b, c = prev[x], prev[x - bpp] if x >= bpp else 0
            if filt == 1:
                line[x] = (line[x] + a) & 255
            elif filt == 2:
                line[x] = (line[x] + b) & 255
            elif filt == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif filt == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, [b"".join(r[i:i + 3] for i in range(0, stride, bpp)) for r in rows]


@needs_browser
def test_the_first_paint_shows_the_ring_and_the_figures(start_node, tmp_path):
    """A headless screenshot taken the moment the page has loaded, with no virtual-time
    budget (so no timer or fetch has had time to run), shows the ring and the node's figures."""
    nodes = [start_node(workers=1) for _ in range(3)]
    with sdht.Ring([nodes[0].id]) as ring:
        for n in nodes:
            ring.join(n.id)
        ring.set("painted", 1)
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1200,1100",
             f"--user-data-dir={tmp_path / 'profile'}"]
    url = nodes[0].url + "/"
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], capture_output=True,
                         text=True, timeout=90).stdout
    assert "loading the ring" not in dom
    assert dom.count('class="token') == 3 * 128, "the ring is not drawn at first paint"
    assert "<dt>records</dt>" in dom and 'id="log"' in dom and "'painted'" in dom
    for n in nodes:
        assert f'href="http://{n.id}/"' in dom

    shot = tmp_path / "first-paint.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", url], capture_output=True,
                   timeout=90, check=True)
    width, height, rows = png_pixels(shot.read_bytes())
    blue = (0x19, 0x71, 0xc2)   # the second node's colour: its tokens and its swatch only

    def near(pixel: bytes) -> bool:
        return all(abs(p - q) <= 6 for p, q in zip(pixel, blue))
    painted = sum(near(row[i:i + 3]) for row in rows for i in range(0, len(row), 3))
    assert painted > 300, f"only {painted} pixels of the ring's tokens in the first paint"


def test_the_run_summary_names_skipped_tests_and_what_installs_them(tmp_path):
    """The summary hook of tests/conftest.py, in a pytest run of its own with one skipped test."""
    from conftest import ROOT
    ours = str(ROOT / "tests" / "conftest.py")
    (tmp_path / "conftest.py").write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('sdht_conftest', {ours!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "pytest_terminal_summary = module.pytest_terminal_summary\n")
    (tmp_path / "test_skips.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.skipif(True, reason='needs a browser (Debian: apt-get install chromium)')\n"
        "def test_needs_a_browser():\n    pass\n\n"
        "def test_runs():\n    pass\n")
    ran = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "1 test(s) skipped: NOT run" in ran.stdout, ran.stdout
    assert "test_skips.py::test_needs_a_browser: needs a browser (Debian: apt-get install " \
           "chromium)" in ran.stdout, ran.stdout


def test_the_page_routes_are_documented_in_the_readme():
    from conftest import ROOT
    readme = (ROOT / "README.md").read_text()
    for route in ("/v1/ui/ring", "/v1/ui/log", "/v1/ui/get", "/v1/ui/set", "/v1/ui/delete"):
        assert route in readme, route
