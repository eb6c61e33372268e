"""A full disk (or quota, or permission) during a stage: one line, exit 1, and the rerun resumes exactly."""

from __future__ import annotations

import errno
import os
import threading

import numpy as np
import pytest

from blockseg import cli
from blockseg.scheduler import resource_problem
from blockseg.volume import Volume
from helpers import read_dataset, write_config


def test_resource_problem_reads_the_error_and_its_causes():
    assert resource_problem(OSError(errno.ENOSPC, "No space left on device", "/data/out/c/0/1")) == (
        "no space left on device: /data/out/c/0/1"
    )
    assert resource_problem(PermissionError(errno.EACCES, "Permission denied", "/x")) == "permission denied: /x"
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded", "/home/q")
        except OSError as inner:
            raise RuntimeError("zarr could not store the chunk") from inner
    except RuntimeError as outer:
        assert resource_problem(outer) == "disk quota exceeded: /home/q"
    assert resource_problem(OSError(errno.ENOENT, "No such file", "/x")) is None
    assert resource_problem(ValueError("bad data")) is None


def _config(folder, inputs):
    folder.mkdir()
    # threads in this process (processes: false), so that a monkeypatch reaches the workers
    return write_config(
        folder, inputs, block_voxels=(16, 64, 64),
        cluster={"local": {"workers": 2, "processes": False, "dashboard": False}},
        scheduler={"progress": False, "retries": 2},
    )


def _run(config) -> int:
    return cli.main(["run", str(config), "--no-progress"])


def test_full_disk_during_relabel_is_one_line_and_the_rerun_equals_an_undisturbed_run(
    tmp_path, small_inputs, monkeypatch, capsys
):
    clean = _config(tmp_path / "clean", small_inputs)
    assert _run(clean) == 0
    capsys.readouterr()

    faulty = _config(tmp_path / "faulty", small_inputs)
    original_write = Volume.write
    writes = {"n": 0}
    guard = threading.Lock()
    full_path = str(tmp_path / "faulty" / "out" / "volumes.zarr" / "segmentation")

    def write_until_the_disk_is_full(self, roi, data):
        if "segmentation" in self.url:
            with guard:
                writes["n"] += 1
                full = writes["n"] > 3
            if full:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), full_path)
        return original_write(self, roi, data)

    monkeypatch.setattr(Volume, "write", write_until_the_disk_is_full)
    assert _run(faulty) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("blockseg: relabel: no space left on device: " + full_path), lines[0]
    assert "3 of 8 block(s) of the stage done" in lines[0], lines[0]
    assert "Traceback" not in err
    log_text = (tmp_path / "faulty" / "out" / "logs" / "blockseg.log").read_text()
    assert "Traceback" in log_text and "No space left on device" in log_text

    monkeypatch.setattr(Volume, "write", original_write)  # space freed
    assert _run(faulty) == 0
    out = capsys.readouterr().out
    assert "relabel: 5 block(s) done, 3 already done" in out, out
    for name in ("fragments", "segmentation/threshold_0.5"):
        np.testing.assert_array_equal(
            read_dataset(f"{tmp_path}/faulty/out/volumes.zarr/{name}"),
            read_dataset(f"{tmp_path}/clean/out/volumes.zarr/{name}"),
        )
    scores = [
        (tmp_path / folder / "out" / "scores.json").read_text() for folder in ("clean", "faulty")
    ]
    assert scores[0] == scores[1]
