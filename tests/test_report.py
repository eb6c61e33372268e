"""Issue 17: ``report.html`` holds every stage of the run, the failed blocks, the scores picture inline.

The picture's own numbers (the PNG text chunk that :mod:`blockseg.plots`
writes) are read back out of the ``data:`` URI in the page and compared
with ``scores.json``; how the picture is drawn is tested with the plots.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from blockseg.plots import read_plotted, scores_curves
from blockseg.view import parse_neuroglancer_link
from helpers import write_config

DEMO_STAGES = ("check", "fragments", "agglomerate", "segments", "relabel", "evaluate")
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "blockseg.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


class _Checker(HTMLParser):
    """Collects what makes a page invalid: unbalanced or misnested tags, duplicate ids, outside resources."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.ids: set[str] = set()
        self.doctype = ""
        self.images: list[dict] = []
        self.links: dict[str, str] = {}
        self.rows: dict[str, list[str]] = {}
        self._row: str | None = None
        self._cell: list[str] | None = None

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if len(named) != len(attrs):
            self.problems.append(f"<{tag}> repeats an attribute")
        if "id" in named:
            if named["id"] in self.ids:
                self.problems.append(f"id {named['id']!r} twice")
            self.ids.add(named["id"] or "")
        if tag in ("script", "iframe", "object"):
            self.problems.append(f"<{tag}> in a report that should need nothing")
        for key in ("src", "href"):
            value = named.get(key) or ""
            if tag != "a" and re.match(r"^(https?:)?//", value):
                self.problems.append(f"<{tag} {key}={value[:60]}> loads from the network")
        if tag == "img":
            self.images.append(named)
        if tag == "a" and "id" in named:
            self.links[named["id"] or ""] = named.get("href") or ""
        if tag == "tr" and (named.get("id") or "").startswith("stage-"):
            self._row = (named["id"] or "").removeprefix("stage-")
            self.rows[self._row] = []
        if tag == "td" and self._row is not None:
            self._cell = []
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            self.problems.append(f"</{tag}> closes a void element")
            return
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> where {self.stack[-1:] or 'nothing'} is open")
            return
        self.stack.pop()
        if tag == "td" and self._cell is not None and self._row is not None:
            self.rows[self._row].append("".join(self._cell).strip())
            self._cell = None
        if tag == "tr":
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def check_page(text: str) -> _Checker:
    """Parse ``text`` and assert it is a well-formed, self-contained HTML document."""
    checker = _Checker()
    checker.feed(text)
    checker.close()
    assert checker.doctype.lower() == "doctype html", checker.doctype
    assert not checker.problems, checker.problems
    assert not checker.stack, f"never closed: {checker.stack}"
    return checker


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """``blockseg demo --report`` on a small volume; the demo folder."""
    folder = tmp_path_factory.mktemp("report")
    result = _cli("demo", str(folder), "--shape", "32", "64", "128", "--workers", "1", "--report", cwd=folder)
    assert result.returncode == 0, result.stderr
    assert f"report: {folder / 'output' / 'report.html'}" in result.stdout
    return folder


def test_report_holds_every_stage_with_its_figures(demo):
    page = check_page((demo / "output" / "report.html").read_text())
    assert list(page.rows) == list(DEMO_STAGES)
    stages = json.loads((demo / "output" / "logs" / "stages.json").read_text())
    for name, cells in page.rows.items():
        stage, done, failed, seconds, rate, state = cells
        assert stage == name and state == "complete" and failed == "0"
        assert re.fullmatch(r"(\d+) / \1", done), done  # every block done
        assert float(seconds) == pytest.approx(stages[name]["seconds"], abs=0.05)
        expected_rate = stages[name]["voxels"] / stages[name]["seconds"] / 1e6
        assert float(rate) == pytest.approx(expected_rate, rel=0.01, abs=0.01)
    text = (demo / "output" / "report.html").read_text()
    assert "No block failed." in text
    # the config, as written
    assert "epsilon_agglomerate: 0.0" in text and "hist_quant_75" in text


def test_report_embeds_the_scores_picture_with_the_scores_of_the_run(demo, tmp_path):
    page = check_page((demo / "output" / "report.html").read_text())
    [image] = [image for image in page.images if image.get("id") == "scores"]
    prefix = "data:image/png;base64,"
    assert image["src"].startswith(prefix)
    png = tmp_path / "inline.png"
    png.write_bytes(base64.b64decode(image["src"][len(prefix):]))
    plotted = read_plotted(png)
    scores = json.loads((demo / "output" / "scores.json").read_text())
    curves = scores_curves(scores)
    assert plotted["threshold"] == pytest.approx(curves["threshold"])
    for key in ("voi_split", "voi_merge", "voi_sum"):
        assert plotted[key] == pytest.approx(curves[key]), key
        # and against scores.json itself, threshold by threshold
        by_threshold = {float(t): s[key] for t, s in scores["thresholds"].items()}
        assert plotted[key] == pytest.approx([by_threshold[t] for t in plotted["threshold"]])
    assert plotted["best_threshold"] == pytest.approx(float(scores["best"]["threshold"]))
    assert png.read_bytes() == (demo / "output" / "scores.png").read_bytes()


def test_report_gives_the_local_viewer_link_and_the_napari_command(demo):
    text = (demo / "output" / "report.html").read_text()
    page = check_page(text)
    link = page.links["neuroglancer"]
    assert link.startswith("http://127.0.0.1:8000/v/blockseg/#!")
    state = parse_neuroglancer_link(link)
    names = [layer["name"] for layer in state["layers"]]
    assert "fragments" in names and "segmentation_0.4" in names
    assert all("127.0.0.1:8000" in json.dumps(layer["source"]) for layer in state["layers"])
    assert f"blockseg view {demo / 'demo.yaml'} --port 8000" in text
    assert "python -c &quot;import napari, zarr" in text


def test_blockseg_report_writes_the_same_page_again(demo):
    report = demo / "output" / "report.html"
    first = report.read_text()
    report.unlink()
    result = _cli("report", str(demo / "demo.yaml"), cwd=demo)
    assert result.returncode == 0, result.stderr
    again = report.read_text()
    strip = re.compile(r"written \d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
    assert strip.sub("", again) == strip.sub("", first)


def test_report_of_a_failed_run_names_the_blocks_and_why(tmp_path, small_inputs):
    inputs = tmp_path / "inputs.zarr"
    shutil.copytree(small_inputs, inputs)
    # a broken chunk of the affinities: the block reading it fails on every attempt
    (inputs / "affinities" / "c" / "0" / "0" / "1" / "1").write_bytes(b"not a compressed chunk")
    config = write_config(
        tmp_path, inputs, stages__fragments={"context": [0, 0, 0]},
        scheduler={"progress": False, "check_inputs": False, "retries": 0},
        cluster={"local": {"workers": 1, "dashboard": False}},
    )
    result = _cli("run", str(config), "--report", cwd=tmp_path)
    assert result.returncode == 1 and "stage fragments: 1 of 4 block(s) failed" in result.stderr
    text = (tmp_path / "out" / "report.html").read_text()
    page = check_page(text)
    assert page.rows["fragments"][1:3] == ["3 / 4", "1"] and page.rows["fragments"][-1] == "failed"
    assert page.rows["agglomerate"][1] == "0 / 4" and page.rows["agglomerate"][-1] == "not started"
    assert "fragments: block 3" in text and "write ROI [0:640, 640:1280, 640:1280] nm" in text
    assert "Traceback" in text  # the full traceback, folded
    assert "no scores" in text
