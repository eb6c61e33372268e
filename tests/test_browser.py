"""Issue 17 in a real browser: headless Chromium, driven through chromedriver with selenium.

(a) ``report.html`` opens from disk with no console error and its picture
rendered; (b) ``blockseg view``'s own neuroglancer page loads every layer
from the server beside the data: every request it makes goes to 127.0.0.1
and is answered (the server's request log says how), none fails.

Debian's ``chromium`` and ``chromium-driver`` are installed by the session
fixture when they are missing (as root, with apt-get, like SLURM for
tests/test_slurm.py); where that cannot be done the tests are skipped with
a message saying so.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from blockseg.config import load_config
from blockseg.demo import write_demo_config, write_demo_inputs
from blockseg.pipeline import open_run, run_pipeline
from blockseg.view import parse_neuroglancer_link

BROWSER, DRIVER = "chromium", "chromedriver"
INSTALL = "apt-get update && apt-get install -y chromium chromium-driver"


def _installed() -> bool:
    return shutil.which(BROWSER) is not None and shutil.which(DRIVER) is not None


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    """The paths of Chromium and its driver, installed first where they are missing and root may install."""
    if not _installed():
        if shutil.which("apt-get") is None or os.geteuid() != 0:
            pytest.skip(f"no headless Chromium here and no way to install it: as root, run `{INSTALL}`")
        result = subprocess.run(
            ["bash", "-c", INSTALL], capture_output=True, text=True, timeout=1200,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        if result.returncode != 0 or not _installed():
            last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
            pytest.skip(f"could not install Chromium with `{INSTALL}`: {last}")
    pytest.importorskip("selenium", reason='the browser tests drive Chromium with selenium: pip install "blockseg[test]"')
    return shutil.which(BROWSER), shutil.which(DRIVER)


def _browser(chromium: tuple[str, str]):
    """A headless Chromium that keeps its console and network logs; software WebGL for neuroglancer."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = chromium
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in (
        "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,800",
        "--enable-unsafe-swiftshader", "--use-angle=swiftshader",  # WebGL without a GPU
        "--disable-background-networking", "--disable-component-update", "--no-first-run",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def _requests(browser) -> list[str]:
    """The URL of every request the page made, from Chrome's performance log."""
    urls = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def _errors(browser) -> list[str]:
    return [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory, client) -> Path:
    """A finished demo run with a pyramid of its fragments (a multiscale layer), and its report."""
    folder = tmp_path_factory.mktemp("browser")
    write_demo_inputs(folder, shape=(32, 64, 128), seed=3)
    path = write_demo_config(
        folder, {"scheduler.progress": False, "stages.downsample": {"levels": 1, "datasets": ["fragments"]}}
    )
    run = open_run(load_config(path))
    try:
        run_pipeline(run, client)
    finally:
        run.store.close()
    report = subprocess.run(
        [sys.executable, "-m", "blockseg.cli", "report", str(path)], cwd=folder, capture_output=True, text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr
    return path


def test_report_opens_from_disk_with_its_picture(chromium, demo):
    page = demo.parent / "output" / "report.html"
    browser = _browser(chromium)
    try:
        browser.get(page.as_uri())
        deadline = time.monotonic() + 30
        while not browser.execute_script("return document.readyState === 'complete'") and time.monotonic() < deadline:
            time.sleep(0.2)
        image = browser.execute_script(
            "const i = document.getElementById('scores'); return [i.complete, i.naturalWidth, i.naturalHeight];"
        )
        assert image[0] and image[1] > 0 and image[2] > 0, image
        rows = browser.execute_script("return [...document.querySelectorAll('tr[id^=stage-]')].map(r => r.id);")
        assert "stage-fragments" in rows and "stage-downsample" in rows
        assert _errors(browser) == []
        outside = [url for url in _requests(browser) if not url.startswith(("file:", "data:"))]
        assert outside == [], outside
    finally:
        browser.quit()


class _Viewer:
    """``blockseg view`` with a request log, in a subprocess."""

    def __init__(self, config: Path, request_log: Path) -> None:
        self.request_log = request_log
        self.process = subprocess.Popen(
            [sys.executable, "-u", "-m", "blockseg.cli", "view", str(config), "--no-browser",
             "--request-log", str(request_log)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=config.parent,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def link(self, timeout: float = 120) -> str:
        seen = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                continue
            seen.append(line)
            if line.startswith("neuroglancer: "):
                return line.removeprefix("neuroglancer: ")
        raise AssertionError(f"no neuroglancer link; printed {seen}")

    def answered(self) -> list[tuple[str, int, str]]:
        """(method, status, path) of every answer so far."""
        lines = self.request_log.read_text().splitlines() if self.request_log.exists() else []
        return [(m, int(s), p) for m, s, p in (line.split(" ", 2) for line in lines)]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _layer_path(layer: dict) -> str:
    source = layer["source"]
    url = source if isinstance(source, str) else source["url"]
    return urllib.parse.urlsplit(url.removeprefix("zarr3://")).path


def test_local_neuroglancer_loads_every_layer_from_127_0_0_1(chromium, demo, tmp_path):
    viewer = _Viewer(demo, tmp_path / "requests.log")
    browser = None
    try:
        link = viewer.link()
        assert link.startswith("http://127.0.0.1:") and "/v/blockseg/#!" in link, link
        state = parse_neuroglancer_link(link)
        layers = {layer["name"]: _layer_path(layer) for layer in state["layers"]}
        visible = [name for name, layer in zip(layers, state["layers"]) if layer.get("visible", True)]
        assert set(layers) == {"affinities", "fragments", "segmentation_0.4", "ground_truth"}
        browser = _browser(chromium)
        browser.get(link)

        def chunks_of(name: str) -> list:
            # a request below the layer beyond its metadata: a chunk or a shard (or a pyramid level's)
            return [a for a in viewer.answered() if a[2].startswith(layers[name]) and not a[2].endswith("zarr.json")]

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not all(chunks_of(name) for name in visible):
            time.sleep(1)
        answered = viewer.answered()
        assert all(chunks_of(name) for name in visible), (visible, answered)
        # every layer's metadata was read
        for name, path in layers.items():
            assert ("GET", 200, f"{path}zarr.json") in answered, (name, answered)
        failed = [a for a in answered if a[1] >= 400]
        assert failed == [], failed
        # the client itself came from the same server
        assert any(path.startswith("/v/blockseg/main.") for _, _, path in answered)
        urls = _requests(browser)
        assert urls, "Chrome logged no request"
        outside = [url for url in urls if urllib.parse.urlsplit(url).hostname not in ("127.0.0.1", None)
                   and not url.startswith(("data:", "blob:"))]
        assert outside == [], outside
        assert _errors(browser) == []
    finally:
        if browser is not None:
            browser.quit()
        viewer.stop()
