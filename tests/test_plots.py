"""Issue 17: scores.png beside scores.json, its plotted values checked against scores.json; tune's trade-off figure."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from blockseg.plots import (
    PLOTTED_KEY, PlotsUnavailable, plot_scores, plot_tradeoffs, read_plotted, scores_figure, tradeoffs_figure,
    write_scores_png,
)
from helpers import write_config

SCORES = {
    "fragments": {"voi_split": 2.5, "voi_merge": 0.07, "voi_sum": 2.57},
    "thresholds": {  # keys as the evaluate stage writes them, out of order on purpose
        "0.5": {"voi_split": 0.06, "voi_merge": 1.7, "voi_sum": 1.76},
        "0.1": {"voi_split": 0.11, "voi_merge": 0.09, "voi_sum": 0.20},
        "0.4": {"voi_split": 0.085, "voi_merge": 0.087, "voi_sum": 0.172},
        "0.95": {"voi_split": 0.0, "voi_merge": 6.8, "voi_sum": 6.8},
    },
    "best": {"threshold": 0.4, "voi_sum": 0.172},
}


def _expected(scores: dict) -> dict:
    thresholds = sorted(scores["thresholds"], key=float)
    return {
        "threshold": [float(t) for t in thresholds],
        **{k: [scores["thresholds"][t][k] for t in thresholds] for k in ("voi_split", "voi_merge", "voi_sum")},
    }


def _lines(axes) -> dict:
    return {line.get_label(): line for line in axes.get_lines()}


def test_figure_lines_are_the_scores():
    expected = _expected(SCORES)
    figure = scores_figure(SCORES)
    by_threshold, tradeoff = figure.axes
    lines = _lines(by_threshold)
    for name in ("voi_split", "voi_merge", "voi_sum"):
        np.testing.assert_array_equal(lines[name].get_xdata(), expected["threshold"])
        np.testing.assert_array_equal(lines[name].get_ydata(), expected[name])
    np.testing.assert_array_equal(lines["best 0.4"].get_xdata(), [0.4, 0.4])  # the vertical mark
    curve = _lines(tradeoff)
    np.testing.assert_array_equal(curve["trade-off"].get_xdata(), expected["voi_split"])
    np.testing.assert_array_equal(curve["trade-off"].get_ydata(), expected["voi_merge"])
    star = next(line for label, line in curve.items() if label.startswith("best 0.4"))
    assert (star.get_xdata()[0], star.get_ydata()[0]) == (0.085, 0.087)


def test_png_carries_what_it_plots(tmp_path):
    path = plot_scores(SCORES, tmp_path / "sub" / "scores.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plotted = read_plotted(path)
    assert {k: plotted[k] for k in ("threshold", "voi_split", "voi_merge", "voi_sum")} == _expected(SCORES)
    assert plotted["best_threshold"] == 0.4
    assert plotted["fragments"] == {"voi_split": 2.5, "voi_merge": 0.07}


def test_tradeoffs_one_curve_per_combination(tmp_path):
    other = json.loads(json.dumps(SCORES))
    other["thresholds"]["0.4"]["voi_merge"] = 0.5
    figure = tradeoffs_figure({"a": SCORES, "b": other}, best="a")
    lines = _lines(figure.axes[0])
    np.testing.assert_array_equal(lines["b"].get_ydata(), _expected(other)["voi_merge"])
    assert lines["a"].get_linewidth() > lines["b"].get_linewidth()
    path = plot_tradeoffs({"a": SCORES, "b": other}, tmp_path / "tune.png", best="a")
    assert read_plotted(path)["b"]["voi_merge"] == _expected(other)["voi_merge"]


def test_without_matplotlib_one_line_and_no_picture(tmp_path, monkeypatch, caplog):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(PlotsUnavailable, match=r'pip install "blockseg\[plots\]"'):
        plot_scores(SCORES, tmp_path / "scores.png")
    with caplog.at_level("INFO", logger="blockseg"):
        assert write_scores_png(SCORES, tmp_path) is None
    assert not (tmp_path / "scores.png").exists()
    assert "no scores.png" in caplog.text


def test_run_and_evaluate_write_scores_png_that_matches_scores_json(tmp_path, small_inputs):
    config = write_config(tmp_path, small_inputs, cluster={"local": {"workers": 2, "dashboard": False}})
    run = subprocess.run([sys.executable, "-m", "blockseg.cli", "run", str(config)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    png, scores_json = tmp_path / "out" / "scores.png", tmp_path / "out" / "scores.json"
    assert str(png) in run.stdout
    scores = json.loads(scores_json.read_text())
    plotted = read_plotted(png)
    expected = _expected(scores)
    assert {k: plotted[k] for k in expected} == expected
    assert plotted["best_threshold"] == scores["best"]["threshold"]
    assert scores["best"]["voi_sum"] == min(plotted["voi_sum"])

    png.unlink()  # `blockseg evaluate` on a finished run draws it again from the same scores
    evaluate = subprocess.run([sys.executable, "-m", "blockseg.cli", "evaluate", str(config)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)
    assert evaluate.returncode == 0, evaluate.stderr
    assert read_plotted(png) == plotted
    from PIL import Image

    with Image.open(png) as image:
        assert PLOTTED_KEY in image.text and image.size[0] > 500


def test_python_run_leaves_what_the_command_leaves(tmp_path, small_inputs, client):
    """blockseg.run writes scores.png and logs/stages.json as `blockseg run` does, for `blockseg report`."""
    import blockseg

    config = write_config(tmp_path, small_inputs)
    report = blockseg.run(config, client=client)
    assert report.ok and report.scores is not None
    plotted = read_plotted(tmp_path / "out" / "scores.png")
    expected = _expected(report.scores)
    assert {k: plotted[k] for k in expected} == expected
    recorded = json.loads((tmp_path / "out" / "logs" / "stages.json").read_text())
    assert set(recorded) == set(report.stages)
    assert all(recorded[name]["succeeded"] == r.succeeded > 0 for name, r in report.stages.items())
