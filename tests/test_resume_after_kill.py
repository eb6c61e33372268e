"""Check 3b: a run whose driver is killed halfway resumes to the same output, bit for bit."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from helpers import read_dataset, write_config


def _done(db: Path, stage: str) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=1) as connection:
            return connection.execute("SELECT COUNT(*) FROM done WHERE stage = ?", (stage,)).fetchone()[0]
    except sqlite3.OperationalError:  # tables not there yet
        return 0


def _start(config: Path, cwd: Path) -> subprocess.Popen:
    # A session of its own, so the kill takes the driver and its cluster together.
    return subprocess.Popen(
        [sys.executable, "-m", "blockseg.cli", "run", str(config)],
        cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )


def test_killed_driver_resumes_to_identical_output(tmp_path, demo_inputs):
    options = dict(block_voxels=(16, 32, 32), cluster={"local": {"workers": 2, "dashboard": False}})
    fresh_dir, killed_dir = tmp_path / "fresh", tmp_path / "killed"
    fresh_dir.mkdir()
    killed_dir.mkdir()
    fresh = write_config(fresh_dir, demo_inputs, **options)
    killed = write_config(killed_dir, demo_inputs, **options)

    process = _start(killed, killed_dir)
    db = killed_dir / "out" / "graph.db"
    deadline = time.time() + 300
    total = 4 * 6 * 6
    # kill in the middle of the fragments stage: some blocks done, not all
    while _done(db, "fragments") < total // 3:
        assert process.poll() is None, process.stderr.read().decode()
        assert time.time() < deadline, "the run never got going"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    partial = _done(db, "fragments")
    assert 0 < partial < total, partial

    resumed = subprocess.run(
        [sys.executable, "-m", "blockseg.cli", "run", str(killed)], cwd=killed_dir, capture_output=True, text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"{partial} already done" in resumed.stdout or f"{partial} already done" in resumed.stderr

    clean = subprocess.run(
        [sys.executable, "-m", "blockseg.cli", "run", str(fresh)], cwd=fresh_dir, capture_output=True, text=True,
        timeout=600,
    )
    assert clean.returncode == 0, clean.stderr
    for name in ("fragments", "segmentation/threshold_0.5"):
        a = read_dataset(killed_dir / "out" / "volumes.zarr" / name)
        b = read_dataset(fresh_dir / "out" / "volumes.zarr" / name)
        np.testing.assert_array_equal(a, b)
