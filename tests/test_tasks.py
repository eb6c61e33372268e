"""Issue 15: users' tasks on the engine of the built-in stages (blockseg.blockwise, YAML python: paths,
the blockseg.tasks entry points, blockseg tasks) and the one-line errors of a bad task."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import blockseg
from blockseg.cli import main
from blockseg.config import ConfigError, load_config, parse_config
from blockseg.inputs import open_run
from custom_tasks import smooth
from helpers import read_dataset

TESTS = Path(__file__).parent
CLUSTER = {"local": {"workers": 2, "dashboard": False}}
SIGMA_NM = 20.0  # 1 voxel in z, 2 in y and x at 20 x 10 x 10 nm


def _whole_volume(inputs: Path) -> np.ndarray:
    raw = read_dataset(f"{inputs}/raw")
    return smooth(raw, [SIGMA_NM / v for v in (20, 10, 10)])


def _config(folder: Path, inputs: Path, stages: dict, block_voxels=(16, 32, 32)) -> Path:
    config = {
        "input": {"raw": f"{inputs}/raw", "affinities": f"{inputs}/affinities"},
        "output": "out",
        "block_shape": [b * v for b, v in zip(block_voxels, (20, 10, 10))],
        "stages": stages,
        "cluster": CLUSTER,
        "scheduler": {"progress": False},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _subprocess_env() -> dict:
    # the driver and its workers import custom_tasks from tests/, as a lab's own package
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}


def test_blockwise_function_equals_the_whole_volume_and_resumes(tmp_path, small_inputs):
    outputs = {"smoothed": str(tmp_path / "out.zarr" / "smoothed")}
    args = dict(
        context=[60, 60, 60], block_shape=[320, 320, 320], workers=2, kwargs={"sigma_voxels": [1.0, 2.0, 2.0]},
    )
    report = blockseg.blockwise(smooth, {"raw": f"{small_inputs}/raw"}, outputs, **args)
    assert report.ok, report.failures
    blocks = report.stages["blockwise"].total
    assert report.table()[0] == {
        "stage": "blockwise", "done": blocks, "skipped": 0, "failed": 0, "seconds": report.stages["blockwise"].seconds,
    }
    np.testing.assert_allclose(read_dataset(outputs["smoothed"]), _whole_volume(small_inputs), atol=1e-6)

    again = blockseg.blockwise(smooth, {"raw": f"{small_inputs}/raw"}, outputs, **args)
    assert again.stages["blockwise"].skipped == blocks and again.stages["blockwise"].submitted == 0


def test_blockwise_reports_failed_blocks_instead_of_exiting(tmp_path, small_inputs):
    def broken(raw):
        raise RuntimeError("this block is broken")

    report = blockseg.blockwise(
        broken, {"raw": f"{small_inputs}/raw"}, {"out": str(tmp_path / "out.zarr" / "out")},
        block_shape=[320, 640, 640], workers=1, retries=0,
    )
    assert not report.ok
    assert len(report.failures) == report.stages["blockwise"].total
    assert "this block is broken" in report.failures[0].traceback


def test_yaml_task_equals_the_whole_volume_and_chains(tmp_path, small_inputs):
    config = _config(tmp_path, small_inputs, {
        "smooth": {"task": "python:custom_tasks:Smooth", "sigma": SIGMA_NM},
        "foreground": {"task": "python:custom_tasks:Threshold", "value": 100.0},
    })
    report = blockseg.run(config, stages=["smooth", "foreground"])
    assert report.ok
    assert list(report.stages) == ["smooth", "foreground"]
    volumes = tmp_path / "out" / "volumes.zarr"
    expected = _whole_volume(small_inputs)
    np.testing.assert_allclose(read_dataset(volumes / "smoothed"), expected, atol=1e-6)
    np.testing.assert_array_equal(read_dataset(volumes / "foreground"), (expected > 100.0).astype(np.uint8))
    # the ledger: a changed parameter reruns the task and, through its token, the one reading it
    text = config.read_text().replace(f"sigma: {SIGMA_NM}", "sigma: 30.0")
    config.write_text(text)
    again = blockseg.run(config, stages=["smooth", "foreground"])
    assert again.stages["smooth"].skipped == 0 and again.stages["foreground"].skipped == 0
    same = blockseg.run(config, stages=["smooth", "foreground"])
    assert same.stages["smooth"].submitted == 0 and same.stages["foreground"].submitted == 0


def _done(db: Path, stage: str) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=1) as connection:
            return connection.execute("SELECT COUNT(*) FROM done WHERE stage = ?", (stage,)).fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_yaml_task_resumes_after_the_driver_is_killed(tmp_path, small_inputs):
    config = _config(tmp_path, small_inputs, {
        "smooth": {"task": "python:custom_tasks:Smooth", "sigma": SIGMA_NM, "pause": 0.3},
    })
    command = [sys.executable, "-m", "blockseg.cli", "run", str(config), "--stages", "smooth"]
    process = subprocess.Popen(
        command, cwd=tmp_path, env=_subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )
    db = tmp_path / "out" / "graph.db"
    total = 2 * 4 * 4
    deadline = time.time() + 300
    while _done(db, "smooth") < total // 4:
        assert process.poll() is None, process.stderr.read().decode()
        assert time.time() < deadline, "the run never got going"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    partial = _done(db, "smooth")
    assert 0 < partial < total, partial

    resumed = subprocess.run(command, cwd=tmp_path, env=_subprocess_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"smooth: {total - partial} block(s) done, {partial} already done, {total - partial} submitted" in resumed.stdout
    np.testing.assert_allclose(
        read_dataset(tmp_path / "out" / "volumes.zarr" / "smoothed"), _whole_volume(small_inputs), atol=1e-6
    )


@pytest.fixture
def installed_package(tmp_path, monkeypatch):
    """A tiny pip package, 'labtasks', registering one task in the blockseg.tasks entry-point group."""
    site = tmp_path / "site"
    (site / "labtasks").mkdir(parents=True)
    (site / "labtasks" / "__init__.py").write_text(
        "import blockseg\n"
        "from pydantic import BaseModel\n\n\n"
        "class Invert(blockseg.Task):\n"
        '    """255 minus the raw."""\n\n'
        "    class Params(BaseModel):\n"
        "        offset: int = 255\n\n"
        "    def reads(self, params):\n"
        '        return {"raw": blockseg.Read("raw")}\n\n'
        "    def writes(self, params):\n"
        '        return {"inverted": blockseg.Write("int16")}\n\n'
        "    def process(self, params, raw):\n"
        "        return params.offset - raw.astype('int16')\n"
    )
    info = site / "labtasks-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: labtasks\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[blockseg.tasks]\ninvert = labtasks:Invert\n")
    monkeypatch.syspath_prepend(str(site))
    return site


def test_an_installed_task_is_found_by_name_and_listed(tmp_path, small_inputs, installed_package, capsys):
    assert main(["tasks"]) == 0
    listing = capsys.readouterr().out
    assert "invert  (labtasks:Invert): 255 minus the raw." in listing
    assert "offset: default 255" in listing
    assert "fragments" in listing and "min_seed_distance: default from the data" in listing

    by_task = load_config(_config(tmp_path, small_inputs, {"flipped": {"task": "invert", "offset": 200}}))
    assert type(by_task.user_tasks["flipped"]).__name__ == "Invert"
    assert by_task.user_tasks["flipped"].parameters.offset == 200
    by_name = load_config(_config(tmp_path, small_inputs, {"invert": {}}))
    run = open_run(by_name)
    try:
        [task] = run.user_tasks
        assert task.resolved_writes == {"inverted": f"{tmp_path}/out/volumes.zarr/inverted"}
    finally:
        run.store.close()


def _error(tmp_path, small_inputs, stages: dict, open_it: bool = False) -> str:
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as caught:
        config = load_config(_config(tmp_path, small_inputs, stages))
        if open_it:
            open_run(config)
    message = str(caught.value)
    assert "\n" not in message
    assert not out.exists(), "nothing may be written before the error"
    return message


@pytest.mark.parametrize(
    "stages, expected, open_it",
    [
        ({"smooth": {"task": "python:no_such_lab.tasks:Smooth"}},
         "config error: stages.smooth.task: cannot import python:no_such_lab.tasks:Smooth (No module named 'no_such_lab')",
         False),
        ({"smooth": {"task": "python:custom_tasks:Smoothe"}},
         "config error: stages.smooth.task: python:custom_tasks:Smoothe: module custom_tasks has no Smoothe", False),
        ({"nothing": {"task": "python:custom_tasks:NoBlockFunction"}},
         "config error: stages.nothing.task: python:custom_tasks:NoBlockFunction has no block function", False),
        ({"smooth": {"task": "python:custom_tasks:Smooth", "sigma": "wide"}},
         "config error: stages.smooth.sigma: Input should be a valid number", False),
        ({"smooth": {"task": "python:custom_tasks:Smooth", "sigmaa": 3}},
         "config error: stages.smooth.sigmaa: unknown parameter of python:custom_tasks:Smooth", False),
        ({"fragments": {"task": "python:custom_tasks:Smooth"}},
         "config error: stages.fragments: fragments is a built-in stage", False),
        ({"a": {"task": "python:custom_tasks:Smooth"}, "b": {"task": "python:custom_tasks:Smooth"}},
         "config error: stages.b: writes smoothed (", True),
        ({"a": {"task": "python:custom_tasks:Smooth", "output": "fragments"}},
         "which stages.fragments writes too", True),
        ({"mask": {"task": "python:custom_tasks:Threshold", "source": "smoothed"}},
         "config error: stages.mask: reads 'smoothed', which is no input of the config and no stage of the run writes",
         True),
    ],
    ids=["does-not-import", "no-such-class", "no-block-function", "bad-parameter", "unknown-parameter",
         "built-in-name", "two-writers", "writes-a-built-in-output", "reads-nothing-written"],
)
def test_a_bad_task_is_one_line_before_any_work(tmp_path, small_inputs, stages, expected, open_it):
    assert expected in _error(tmp_path, small_inputs, stages, open_it)


def test_parse_config_keeps_built_in_errors(tmp_path):
    with pytest.raises(ConfigError, match="stages.fragments.min_seed_distanse: unknown key"):
        parse_config({"input": {"raw": "x.zarr/raw"}, "stages": {"fragments": {"min_seed_distanse": 3}}})


def test_the_example_runs_on_a_small_volume(tmp_path):
    example = TESTS.parent / "examples" / "custom_task.py"
    result = subprocess.run(
        [sys.executable, str(example), str(tmp_path), "--shape", "16", "64", "64", "--workers", "2"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "max difference to the whole volume: 0" in result.stdout
