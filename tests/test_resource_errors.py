"""A full disk (or quota, or permission) during a stage: one line, exit 1, and the rerun resumes exactly.

In blocks and in the driver's own steps (the LUT pieces of the segments
stage, the scores); the LUT test fills a real, small tmpfs (needs root).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

from blockseg import cli, lut_pieces
from blockseg.demo import write_demo_config
from blockseg.scheduler import resource_problem
from blockseg.stage_errors import naming
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


def test_a_short_write_and_a_write_without_a_file_name_are_resource_problems():
    # numpy's tofile (np.save to a file) says a full disk this way: no errno, no path
    problem = resource_problem(OSError("11468 requested and 7152 written"))
    assert problem is not None and problem.startswith("a write stopped short (11468 requested and 7152 written)")
    assert resource_problem(OSError("something else")) is None
    # a failed write or close names no file; naming() says which one was being written, keeping the type
    with pytest.raises(OSError) as raised:
        with naming("/data/out/scores.json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert raised.value.errno == errno.ENOSPC
    assert resource_problem(raised.value) == "no space left on device: /data/out/scores.json"
    with pytest.raises(PermissionError) as raised:  # the kind of error stays, for whoever catches it
        with naming("/data/out/report.html"):
            raise PermissionError(errno.EACCES, "Permission denied")
    assert raised.value.filename == "/data/out/report.html"
    with pytest.raises(PermissionError, match="/opened/here"):  # a name the system gave is kept
        with naming("/elsewhere"):
            raise PermissionError(errno.EACCES, "Permission denied", "/opened/here")


@pytest.fixture
def small_filesystem(tmp_path):
    """``mount(folder, size)``: a tmpfs of ``size`` (e.g. "12k") on ``folder``; remount it with ``grow``.

    Needs root (or CAP_SYS_ADMIN); the test is skipped where mounting is not permitted.
    """
    mounted = []

    def mount(folder, size: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {result.stderr.strip()}")
        mounted.append(folder)

    def grow(folder, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)

    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot make a small filesystem to fill")
    mount.grow = grow
    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", str(folder)], check=True)


def test_a_lut_piece_on_a_full_disk_raises_enospc_naming_it_and_leaves_no_temporary(tmp_path, small_filesystem):
    folder = tmp_path / "luts"
    small_filesystem(folder, "4k")
    ids = np.arange(1, 1001, dtype=np.uint64)  # 16 kB of rows: more than the filesystem holds
    with pytest.raises(OSError) as raised:
        lut_pieces.write_piece(folder / "threshold_0.5", 0, ids, ids)
    # the errno the system gave, not numpy's bare "N requested and M written"
    assert raised.value.errno == errno.ENOSPC
    assert raised.value.filename == str(folder / "threshold_0.5" / "piece_0.npy")
    assert list((folder / "threshold_0.5").iterdir()) == []  # the half-written temporary is gone


def _blockseg(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blockseg.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def _demo_config(folder, inputs):
    folder.mkdir()
    return write_demo_config(folder, {
        "input.affinities": f"{inputs}/affinities", "input.ground_truth": f"{inputs}/labels",
        "cluster.local.workers": 2, "scheduler.progress": False,
    })


def _files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_full_disk_while_the_lut_pieces_are_written_is_one_line_and_the_rerun_equals_an_undisturbed_run(
    tmp_path, demo_inputs, small_filesystem
):
    clean = _demo_config(tmp_path / "clean", demo_inputs)
    assert _blockseg("run", str(clean), "--quiet", cwd=tmp_path).returncode == 0

    faulty = _demo_config(tmp_path / "faulty", demo_inputs)
    luts = tmp_path / "faulty" / "output" / "graph.db.luts"  # where the default SQLite store keeps them
    # three pages: the demo's ten thresholds need a piece (two pages each) and an index apiece
    small_filesystem(luts, "12k")
    failed = _blockseg("run", str(faulty), cwd=tmp_path)
    assert failed.returncode == 1, failed.stderr
    lines = [line for line in failed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, failed.stderr
    assert lines[0].startswith(f"blockseg: segments: no space left on device: {luts}/threshold_"), lines[0]
    assert "/piece_0.npy; 0 of 1 block(s) of the stage done" in lines[0], lines[0]
    assert "Traceback" not in failed.stderr
    log_text = (tmp_path / "faulty" / "output" / "logs" / "blockseg.log").read_text()
    assert "Traceback" in log_text and "No space left on device" in log_text
    left = [str(p.relative_to(luts)) for p in luts.rglob("*") if p.is_file()]
    assert not [name for name in left if name.endswith(".tmp")], left  # no half-written piece takes up space
    assert lut_pieces.INDEX not in {name.rsplit("/", 1)[-1] for name in left}, left  # no LUT looks complete

    small_filesystem.grow(luts, "64m")  # space freed; the pieces written before stay
    rerun = _blockseg("run", str(faulty), cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert "segments: 1 block(s) done, 0 already done" in rerun.stdout, rerun.stdout
    for name in ("fragments", "segmentation/threshold_0.4"):
        np.testing.assert_array_equal(
            read_dataset(f"{tmp_path}/faulty/output/volumes.zarr/{name}"),
            read_dataset(f"{tmp_path}/clean/output/volumes.zarr/{name}"),
        )
    # every piece and index, byte for byte; the scores to the last digit
    assert _files(luts) == _files(tmp_path / "clean" / "output" / "graph.db.luts")
    assert (tmp_path / "faulty" / "output" / "scores.json").read_text() == (
        tmp_path / "clean" / "output" / "scores.json").read_text()
