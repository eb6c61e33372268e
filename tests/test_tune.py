"""Issue 17 A: ``blockseg tune`` on the demo volume with a 2 x 2 grid; resume after a kill; bad input in one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import write_config

# the small demo volume is 32 x 128 x 128 voxels at 20 x 10 x 10 nm; blocks of 32 x 64 x 64 voxels
ROI = ["0", "0", "0", "640", "640", "1280"]  # half of it in y: two blocks
# the test config's own values (the defaults) are in the grid: 100 and hist_quant_75
GRID = ["--grid", "stages.fragments.min_seed_distance=60,100", "--grid", "stages.agglomerate.scoring=hist_quant_50,hist_quant_75"]
CLUSTER = {"local": {"workers": 2, "dashboard": False}}


def _cli(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blockseg.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def _tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


def test_tune_finds_a_combination_at_least_as_good_and_its_config_runs(tmp_path, small_inputs):
    config = write_config(tmp_path, small_inputs, cluster=CLUSTER)
    tune = _cli("tune", str(config), "--roi", *ROI, *GRID, cwd=tmp_path)
    assert tune.returncode == 0, tune.stderr
    assert "combination(s) on the ROI offset [0, 0, 0] shape [640, 640, 1280] nm" in tune.stdout
    folder = tmp_path / "out" / "tune"
    result = json.loads((folder / "tune.json").read_text())
    rows = result["combinations"]
    assert len(rows) == 4 and sum(row["baseline"] for row in rows) == 1  # the config's values are a grid point
    baseline = next(row for row in rows if row["baseline"])
    assert baseline["values"] == {"stages.fragments.min_seed_distance": 100, "stages.agglomerate.scoring": "hist_quant_75"}
    best = result["best"]
    assert best["best"]["voi_sum"] <= baseline["best"]["voi_sum"]
    for row in rows:
        # each row is its combination's own best threshold by VOI sum, from its own scores.json
        scores = json.loads((Path(row["folder"]) / "scores.json").read_text())
        assert scores["thresholds"] == row["scores"]["thresholds"]
        assert row["best"]["voi_sum"] == pytest.approx(scores["best"]["voi_sum"])
        assert row["best"]["threshold"] == scores["best"]["threshold"]
        assert Path(row["folder"]).parent == folder
    assert [row["best"]["voi_sum"] for row in rows] == sorted(row["best"]["voi_sum"] for row in rows)
    # the table: one row per combination, best first
    table = [line.split() for line in tune.stdout.splitlines() if line.split()[:1] in (["1"], ["2"], ["3"], ["4"])]
    assert [line[1] for line in table] == [row["key"] for row in rows]
    assert float(table[0][7]) == pytest.approx(best["best"]["voi_sum"], abs=1e-4)

    # the html is one self-contained page: its figure inline, nothing fetched
    page = (folder / "tune.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "data:image/png;base64," in page
    assert "http://" not in page and "https://" not in page and "<script" not in page
    from blockseg.plots import read_plotted

    curves = read_plotted(folder / "tune.png")
    assert len(curves) == 4
    for row in rows:
        label = next(label for label in curves if label.startswith(
            f"min_seed_distance={row['values']['stages.fragments.min_seed_distance']}, "
            f"scoring={row['values']['stages.agglomerate.scoring']}"))
        assert curves[label]["voi_sum"] == [row["scores"]["thresholds"][t]["voi_sum"]
                                            for t in sorted(row["scores"]["thresholds"], key=float)]

    # the tuned config: the best values, the whole volume, and `blockseg run` takes it as it is
    tuned = tmp_path / "config.tuned.yaml"
    data = yaml.safe_load(tuned.read_text())
    assert data["stages"]["fragments"]["min_seed_distance"] == best["values"]["stages.fragments.min_seed_distance"]
    assert data["stages"]["agglomerate"]["scoring"] == best["values"]["stages.agglomerate.scoring"]
    assert "roi" not in data and data["output"] == "out"
    run = _cli("run", str(tuned), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    from blockseg.volume import open_volume

    segmentation = open_volume(tmp_path / "out" / "volumes.zarr" / "segmentation" / "threshold_0.5")
    assert list(segmentation.roi.shape) == [640, 1280, 1280]  # the whole volume, not the ROI

    # a second tune with another metric recomputes nothing: every combination is taken as it stands
    stamps = {row["key"]: (Path(row["folder"]) / "tune-result.json").stat().st_mtime_ns for row in rows}
    again = _cli("tune", str(config), "--roi", *ROI, *GRID, "--metric", "f1@0.5", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already done, not recomputed") == 4
    assert "f1@0.5" in again.stdout.splitlines()[5]
    result = json.loads((folder / "tune.json").read_text())
    assert result["metric"] == "f1@0.5"
    f1 = [row["best"]["f1"] for row in result["combinations"]]
    assert f1 == sorted(f1, reverse=True) and all(0 <= v <= 1 for v in f1)
    for row in rows:  # scores untouched (the F1 is cached beside them)
        stored = json.loads((Path(row["folder"]) / "tune-result.json").read_text())
        assert stored["scores"] == row["scores"] and "f1@0.5" in stored


def _results(folder: Path) -> list[Path]:
    return sorted(folder.glob("*/tune-result.json"))


def test_killed_sweep_resumes_without_recomputing_finished_runs(tmp_path, small_inputs):
    config = write_config(tmp_path, small_inputs, cluster=CLUSTER)
    args = [sys.executable, "-m", "blockseg.cli", "tune", str(config), "--roi", *ROI, *GRID, "--parallel", "1"]
    # a session of its own, so the kill takes the driver and its cluster together
    process = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    folder = tmp_path / "out" / "tune"
    deadline = time.time() + 300
    while not _results(folder):
        assert process.poll() is None, process.stderr.read().decode()
        assert time.time() < deadline, "the sweep never finished a combination"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = {path: path.stat().st_mtime_ns for path in _results(folder)}
    assert 1 <= len(finished) < 4
    scores = {path: (path.parent / "scores.json").stat().st_mtime_ns for path in finished}

    resumed = _cli("tune", str(config), "--roi", *ROI, *GRID, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.count("already done, not recomputed") == len(finished)
    assert resumed.stdout.count(" done in ") == 4 - len(finished)
    for path, stamp in finished.items():  # neither re-run nor re-scored
        assert path.stat().st_mtime_ns == stamp
        assert (path.parent / "scores.json").stat().st_mtime_ns == scores[path]
    assert len(_results(folder)) == 4
    assert len(json.loads((folder / "tune.json").read_text())["combinations"]) == 4
    assert (tmp_path / "config.tuned.yaml").exists()


def _zero_labels(folder: Path, small_inputs: Path) -> str:
    """A ground truth that is 0 (unlabelled) everywhere, beside a copy of nothing else."""
    from blockseg.volume import create_volume, open_volume

    labels = open_volume(small_inputs / "labels")
    url = str(folder / "empty.zarr" / "labels")
    empty = create_volume(url, labels.roi, labels.voxel_size, labels.dtype, labels.chunk_shape)
    empty.write(labels.roi, np.zeros(labels.array.shape, labels.dtype))
    return url


BAD = {
    "unknown key": (["--grid", "stages.fragments.min_seed_distanse=60,100"],
                    "--grid stages.fragments.min_seed_distanse: not a config key"),
    "unknown section": (["--grid", "stages.fragmentz.min_seed_distance=60"], "--grid stages.fragmentz.min_seed_distance: not a config key"),
    "a section": (["--grid", "stages.fragments=60"], "--grid stages.fragments: a section, not a value"),
    "not tunable": (["--grid", "output=a,b"], "--grid output: not tunable"),
    "negative distance": (["--grid", "stages.fragments.min_seed_distance=60,-5"],
                          "--grid stages.fragments.min_seed_distance=-5: stages.fragments.min_seed_distance: "),
    "bad scoring": (["--grid", "stages.agglomerate.scoring=hist_quant_75,median"],
                    "--grid stages.agglomerate.scoring=median: stages.agglomerate.scoring: unknown scoring"),
    "fails against the inputs": (["--grid", "stages.fragments.chunk_shape=[32,64,64],[7,7,7]"],
                                 "--grid stages.fragments.chunk_shape=[7, 7, 7]: block_shape"),
    "no values": (["--grid", "stages.fragments.min_seed_distance="], "expected KEY=VALUE"),
    "bad metric": (["--grid", "stages.agglomerate.scoring=mean", "--metric", "f1@2"], "--metric: 'f1@2'"),
    "ROI outside": (["--grid", "stages.agglomerate.scoring=mean", "--roi", "0", "0", "0", "640", "640", "2560"],
                    "--roi: [0:640, 0:640, 0:2560] nm is outside the volume [0:640, 0:1280, 0:1280] nm"),
    "ROI off the voxels": (["--grid", "stages.agglomerate.scoring=mean", "--roi", "5", "0", "0", "640", "640", "640"],
                           "is not aligned to the voxel size"),
    "no ground truth in the config": (["--grid", "stages.agglomerate.scoring=mean"], "the config has no input.ground_truth"),
    "ground truth all 0 in the ROI": (["--grid", "stages.agglomerate.scoring=mean"], "input.ground_truth is 0 (unlabelled) everywhere"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, small_inputs, case, capsys):
    arguments, message = BAD[case]
    config = write_config(tmp_path, small_inputs, cluster=CLUSTER)
    if case.startswith("no ground truth"):
        data = yaml.safe_load(config.read_text())
        del data["input"]["ground_truth"]
        config.write_text(yaml.safe_dump(data))
    if case.startswith("ground truth all 0"):
        data = yaml.safe_load(config.read_text())
        data["input"]["ground_truth"] = _zero_labels(tmp_path, small_inputs)
        config.write_text(yaml.safe_dump(data))
    roi = [] if "--roi" in arguments else ["--roi", *ROI]
    before = _tree(tmp_path)
    from blockseg.cli import main

    code = main(["tune", str(config), *roi, *arguments])  # in this process: refusals start no cluster
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("blockseg: "), err
    assert message in lines[0], lines[0]
    assert _tree(tmp_path) == before  # not a folder, not a file
