"""The SLURM path on a one-node SLURM (deploy/slurm/single-node.sh).

CI (root, CI=true) brings SLURM up itself; elsewhere the test runs where
`sinfo` answers and is skipped with a message otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from blockseg.config import load_config
from blockseg.pipeline import open_run, run_pipeline
from helpers import read_dataset, write_config

SCRIPT = Path(__file__).resolve().parents[1] / "deploy" / "slurm" / "single-node.sh"


def _slurm_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    return result.returncode == 0 and "idle" in result.stdout


@pytest.fixture(scope="module")
def slurm():
    if not _slurm_answers():
        if os.environ.get("CI") and os.geteuid() == 0:
            result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=900)
            assert result.returncode == 0, result.stdout + result.stderr
        else:
            pytest.skip("no SLURM here: run deploy/slurm/single-node.sh as root to try this path")
    assert _slurm_answers()


def test_slurm_run_equals_local_run_and_leaves_no_job(tmp_path, small_inputs, client, slurm):
    local_dir, slurm_dir = tmp_path / "local", tmp_path / "slurm"
    local_dir.mkdir()
    slurm_dir.mkdir()
    run = open_run(load_config(write_config(local_dir, small_inputs)))
    run_pipeline(run, client)
    run.store.close()

    config = write_config(
        slurm_dir, small_inputs,
        cluster={"kind": "slurm", "slurm": {"queue": "debug", "cores": 1, "memory": "2GiB", "walltime": "00:20:00", "jobs": 2}},
    )
    result = subprocess.run(
        [sys.executable, "-m", "blockseg.cli", "run", str(config)], cwd=slurm_dir, capture_output=True, text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr
    assert "SLURM cluster: dashboard http://127.0.0.1:" in result.stdout
    np.testing.assert_array_equal(
        read_dataset(slurm_dir / "out" / "volumes.zarr" / "segmentation" / "threshold_0.5"),
        read_dataset(run.segmentation_url(0.5)),
    )
    queue = subprocess.run(["squeue", "-h"], capture_output=True, text=True, timeout=30)
    assert queue.stdout.strip() == "", queue.stdout


def test_slurm_job_that_sbatch_refuses_is_one_line(tmp_path, small_inputs, slurm):
    config = write_config(
        tmp_path, small_inputs,
        cluster={"kind": "slurm", "slurm": {"queue": "debug", "memory": "4000GiB", "walltime": "00:05:00"}},
    )
    result = subprocess.run(
        [sys.executable, "-m", "blockseg.cli", "run", str(config)], cwd=tmp_path, capture_output=True, text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and "distributed" not in line]
    assert any("sbatch refuses the worker job" in line for line in lines), result.stderr
    assert not (tmp_path / "out" / "volumes.zarr" / "fragments").exists()
