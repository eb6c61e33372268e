"""Check 5: ``blockseg view`` serves a finished demo output on 127.0.0.1 with CORS headers."""

from __future__ import annotations

import json
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from blockseg.config import load_config
from blockseg.demo import write_demo_config, write_demo_inputs
from blockseg.pipeline import open_run, run_pipeline
from blockseg.view import parse_neuroglancer_link

VOXEL_M = {"z": 20e-9, "y": 10e-9, "x": 10e-9}


@pytest.fixture(scope="module")
def demo(tmp_path_factory, client) -> Path:
    """The demo on a small volume, with a pyramid for the fragments only (the rest stays single-scale)."""
    folder = tmp_path_factory.mktemp("view")
    write_demo_inputs(folder, shape=(32, 64, 128), seed=2)
    path = write_demo_config(
        folder,
        {"scheduler.progress": False, "stages.downsample": {"levels": 2, "datasets": ["fragments"]}},
    )
    run = open_run(load_config(path))
    try:
        run_pipeline(run, client)
    finally:
        run.store.close()
    return path


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blockseg.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


class Viewer:
    """``blockseg view`` in a subprocess, its printed lines collected by a thread."""

    def __init__(self, config: Path, *options: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-u", "-m", "blockseg.cli", "view", str(config), "--no-browser", *options],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=config.parent,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.printed: list[str] = []

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def until(self, prefix: str, timeout: float = 60) -> str:
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no line starting with {prefix!r}; got {self.printed}") from None
            self.printed.append(line)
            if line.startswith(prefix):
                return line


def _fetch(url: str, method: str = "GET", headers: dict | None = None):
    request = urllib.request.Request(url, method=method, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.status, answer.headers, answer.read()


def _source_url(layer: dict) -> str:
    source = layer["source"]
    url = source if isinstance(source, str) else source["url"]
    assert url.startswith("zarr3://http://127.0.0.1:"), url
    return url.removeprefix("zarr3://")


@pytest.fixture(scope="module")
def served(demo):
    viewer = Viewer(demo)
    try:
        link = viewer.until("neuroglancer: ").removeprefix("neuroglancer: ")
        napari = viewer.until("napari: ").removeprefix("napari: ")
        yield viewer, parse_neuroglancer_link(link), napari
    finally:
        if viewer.process.poll() is None:
            viewer.process.kill()
            viewer.process.wait()


def test_state_names_every_layer_with_type_and_voxel_size(served):
    _, state, _ = served
    kinds = {layer["name"]: layer["type"] for layer in state["layers"]}
    assert kinds == {
        "affinities": "image", "fragments": "segmentation", "segmentation_0.4": "segmentation",
        "ground_truth": "segmentation",
    }
    assert set(state["dimensions"]) == set(VOXEL_M)
    for axis, (scale, unit) in state["dimensions"].items():
        assert unit == "m" and scale == pytest.approx(VOXEL_M[axis])
    for layer in state["layers"]:
        if isinstance(layer["source"], dict):  # a plain array: voxel size through the source transform
            output = layer["source"]["transform"]["outputDimensions"]
            for axis, size in VOXEL_M.items():
                assert output[axis][0] == pytest.approx(size) and output[axis][1] == "m"
            # the affinities' channel axis is a local (primed) dimension, not a fourth spatial one
            assert [name for name in output if name not in VOXEL_M] == (["c0'"] if layer["name"] == "affinities" else [])


def test_every_layer_zarr_json_is_served_with_cors(served, demo):
    _, state, _ = served
    for layer in state["layers"]:
        url = _source_url(layer)
        status, headers, body = _fetch(url + "zarr.json")
        assert status == 200
        assert headers["Access-Control-Allow-Origin"] == "*"
        meta = json.loads(body)
        if layer["name"] == "fragments":
            # the pyramid group: OME-Zarr 0.5 multiscales, levels s0..s2 beside it
            assert meta["node_type"] == "group"
            datasets = meta["attributes"]["ome"]["multiscales"][0]["datasets"]
            assert [d["path"] for d in datasets] == ["s0", "s1", "s2"]
            assert json.loads(_fetch(url + "s2/zarr.json")[2])["shape"] == [16, 16, 32]
        else:
            assert meta["node_type"] == "array"
            assert meta["attributes"]["voxel_size"] == [20, 10, 10]


def test_options_head_and_range(served, demo):
    _, state, _ = served
    base = _source_url(state["layers"][0]).split("/", 3)[:3]
    base = "/".join(base)
    status, headers, _ = _fetch(base + "/volumes.zarr/zarr.json", method="OPTIONS",
                                headers={"Origin": "http://example.org", "Access-Control-Request-Headers": "range"})
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert "GET" in headers["Access-Control-Allow-Methods"]
    status, headers, body = _fetch(base + "/volumes.zarr/fragments/zarr.json", method="HEAD")
    assert status == 200 and body == b"" and headers["Access-Control-Allow-Origin"] == "*"
    # a chunk file, read in part
    chunk = next(p for p in (demo.parent / "output" / "volumes.zarr" / "fragments" / "c").rglob("*") if p.is_file())
    relative = chunk.relative_to(demo.parent / "output").as_posix()
    whole = chunk.read_bytes()
    status, headers, body = _fetch(f"{base}/{relative}", headers={"Range": "bytes=4-11"})
    assert status == 206
    assert body == whole[4:12]
    assert headers["Content-Range"] == f"bytes 4-11/{len(whole)}"
    status, _, body = _fetch(f"{base}/{relative}", headers={"Range": "bytes=-5"})
    assert status == 206 and body == whole[-5:]
    # nothing outside the output folder and the mounted inputs
    with pytest.raises(urllib.error.HTTPError) as error:
        _fetch(base + "/../demo.yaml")
    assert error.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as error:
        _fetch(base + "/inputs/input.zarr/../../demo.yaml")
    assert error.value.code == 404


def test_napari_command_opens_the_same_outputs(served, demo):
    _, state, napari = served
    words = shlex.split(napari)
    assert words[:2] == ["python", "-c"]
    script = words[2]
    compile(script, "napari-command", "exec")  # valid Python
    output = demo.parent / "output" / "volumes.zarr"
    assert f"zarr.open_array('{output / 'pyramids' / 'fragments' / 's2'}'" in script
    assert f"zarr.open_array('{output / 'segmentation' / 'threshold_0.4'}'" in script
    for layer in state["layers"]:
        call = "add_image" if layer["type"] == "image" else "add_labels"
        assert re.search(rf"v\.{call}\([^;]*name={layer['name']!r}", script), (layer["name"], script)
    assert "scale=(20.0, 10.0, 10.0)" in script


def test_the_neuroglancer_client_is_served_beside_the_data(served):
    """Offline: the link opens the client that the same server serves, at /v/blockseg/."""
    viewer, state, _ = served
    link = next(line for line in viewer.printed if line.startswith("neuroglancer: ")).removeprefix("neuroglancer: ")
    page = link.split("#!", 1)[0]
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v/blockseg/", page), link
    base = page.removesuffix("/v/blockseg/")
    assert all(_source_url(layer).startswith(base + "/") for layer in state["layers"])
    status, headers, body = _fetch(page)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    scripts = re.findall(r'src="([^"]+\.js)"', body.decode())
    assert scripts
    status, headers, _ = _fetch(page + scripts[-1])
    assert status == 200 and headers["Content-Type"] == "text/javascript"
    # what the client asks of "its Python server": acknowledged, nothing kept
    request = urllib.request.Request(f"{base}/state/blockseg", data=json.dumps({"g": 7, "s": {}}).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert json.loads(answer.read()) == {"g": 7}
    with urllib.request.urlopen(f"{base}/events/blockseg?c=test", timeout=10) as answer:
        assert answer.headers["Content-Type"] == "text/event-stream"
        assert answer.readline().startswith(b":")  # a comment: the stream is open, no state is pushed
    assert _fetch(base + "/favicon.ico")[0] == 204
    with pytest.raises(urllib.error.HTTPError) as error:  # the data stay read-only
        urllib.request.urlopen(urllib.request.Request(base + "/volumes.zarr/zarr.json", data=b"{}", method="POST"))
    assert error.value.code == 405


def test_ctrl_c_stops_cleanly(served):
    """Last of the tests on the served output: it stops the server."""
    viewer, _, _ = served
    viewer.process.send_signal(signal.SIGINT)
    assert viewer.process.wait(timeout=20) == 0
    viewer.until("blockseg view: stopped", timeout=5)


def test_bad_port_and_missing_outputs_are_one_line_errors(tmp_path, demo):
    bad = _cli("view", str(demo), "--port", "70000", "--no-browser", cwd=tmp_path)
    assert bad.returncode == 2 and "--port: 70000" in bad.stderr and "Traceback" not in bad.stderr
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    config = write_demo_config(fresh)
    empty = _cli("view", str(config), "--no-browser", cwd=tmp_path)
    assert empty.returncode == 2
    assert "no fragments or segmentation to show yet" in empty.stderr and "Traceback" not in empty.stderr


def test_public_link_on_request(demo, tmp_path):
    viewer = Viewer(demo, "--public")
    try:
        link = viewer.until("neuroglancer: ").removeprefix("neuroglancer: ")
        assert link.startswith("https://neuroglancer-demo.appspot.com/#!")
        assert all(_source_url(layer) for layer in parse_neuroglancer_link(link)["layers"])
        assert not any("/v/blockseg/" in line for line in viewer.printed)
    finally:
        viewer.process.kill()
        viewer.process.wait()
