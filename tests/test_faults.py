"""Faults a long run must survive: lost workers, failing and hung blocks; other clusters."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from distributed import Client, LocalCluster

from blockseg.blocks import BlockGrid
from blockseg.config import load_config
from blockseg.geometry import Roi
from blockseg.graph import SqliteGraphStore
from blockseg.pipeline import open_run, run_pipeline
from blockseg.scheduler import StageFailed, run_stage
from helpers import read_dataset, write_config

import fault_blocks


def _cli(*args, cwd, env=None):
    return subprocess.run(
        [sys.executable, "-m", "blockseg.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env
    )


def _cluster(workers=2):
    return LocalCluster(
        n_workers=workers, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0", memory_limit="4GiB"
    )


def test_killed_worker_does_not_change_the_output(tmp_path, demo_inputs, client):
    """(a) a worker process dies while blocks run: the run finishes, output bit-identical."""
    options = dict(block_voxels=(16, 32, 32))
    (tmp_path / "clean").mkdir()
    (tmp_path / "faulty").mkdir()
    clean = load_config(write_config(tmp_path / "clean", demo_inputs, **options))
    run = open_run(clean)
    run_pipeline(run, client, stages=["fragments"])
    run.store.close()
    reference = read_dataset(run.fragments_url)

    faulty = load_config(write_config(tmp_path / "faulty", demo_inputs, **options))
    with _cluster() as cluster, Client(cluster) as own:
        run = open_run(faulty)
        killed = threading.Event()

        def kill_one_worker():
            db = SqliteGraphStore(tmp_path / "faulty" / "out" / "graph.db")
            while len(db.done_blocks("fragments")) < 20:
                time.sleep(0.02)
            db.close()
            pid = next(iter(own.run(os.getpid).values()))
            os.kill(pid, signal.SIGKILL)
            killed.set()

        killer = threading.Thread(target=kill_one_worker, daemon=True)
        killer.start()
        reports = run_pipeline(run, own, stages=["fragments"])
        run.store.close()
        killer.join(timeout=60)
    assert killed.is_set(), "the worker was never killed: the run ended first"
    assert reports["fragments"].succeeded == reports["fragments"].total == 4 * 6 * 6
    np.testing.assert_array_equal(read_dataset(run.fragments_url), reference)


def test_failing_block_is_reported_and_rerun_completes_the_rest(tmp_path, small_inputs):
    """(c) a block that raises: others finish, the report names it, exit 1; the rerun redoes only it."""
    inputs = tmp_path / "inputs.zarr"
    shutil.copytree(small_inputs, inputs)
    # break one chunk of the affinities: the block that reads it fails on every attempt
    chunk = inputs / "affinities" / "c" / "0" / "0" / "1" / "1"
    assert chunk.exists()
    saved = chunk.read_bytes()
    chunk.write_bytes(b"not a compressed chunk")
    config = write_config(
        tmp_path, inputs, block_voxels=(32, 64, 64),
        stages__fragments={"context": [0, 0, 0]}, scheduler={"progress": False, "check_inputs": False, "retries": 1},
        cluster={"local": {"workers": 2, "dashboard": False}},
    )
    failed = _cli("run", str(config), "--stages", "fragments", cwd=tmp_path)
    assert failed.returncode == 1, failed.stderr
    assert "stage fragments: 1 of 4 block(s) failed" in failed.stderr
    assert "block 3 (write ROI [0:640, 640:1280, 640:1280] nm) failed 2 time(s)" in failed.stderr
    assert "Traceback" in failed.stderr
    status = _cli("status", str(config), cwd=tmp_path)
    assert "FAILED in the last run: 3 " in status.stdout, status.stdout

    chunk.write_bytes(saved)
    rerun = _cli("run", str(config), "--stages", "fragments", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert "fragments: 1 block(s) done, 3 already done, 1 submitted" in rerun.stdout
    status = _cli("status", str(config), cwd=tmp_path)
    assert "FAILED" not in status.stdout and "complete" in status.stdout


def test_hung_block_is_reported_as_failed(tmp_path, client_one_worker):
    """(d) a block that hangs past the timeout fails; the others finish."""
    grid = BlockGrid(Roi((0, 0, 0), (40, 40, 40)), (20, 20, 20))
    store = SqliteGraphStore(tmp_path / "graph.db")
    function = functools.partial(fault_blocks.hang_on, hung_block=3)
    start = time.monotonic()
    with pytest.raises(StageFailed) as failure:
        run_stage(client_one_worker, "hang", grid, function, store, retries=0, progress=False, block_timeout=3)
    assert time.monotonic() - start < 120
    report = failure.value.report
    assert [f.block_id for f in report.failures] == [3]
    assert "block_timeout=3" in report.failures[0].traceback
    assert store.done_blocks("hang") == set(range(8)) - {3}
    store.close()
    # the worker that hung was restarted: the cluster still runs blocks
    assert client_one_worker.submit(sum, [1, 2], pure=False).result(timeout=60) == 3


def test_run_against_a_running_scheduler(tmp_path, small_inputs, client):
    """(3) cluster: {kind: address} reaches a scheduler the test started on 127.0.0.1."""
    reference_dir, address_dir = tmp_path / "local", tmp_path / "address"
    reference_dir.mkdir()
    address_dir.mkdir()
    reference = load_config(write_config(reference_dir, small_inputs))
    run = open_run(reference)
    run_pipeline(run, client)
    run.store.close()
    with _cluster(workers=1) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        config = write_config(address_dir, small_inputs, cluster={"kind": "address", "address": cluster.scheduler_address})
        result = _cli("run", str(config), cwd=address_dir)
        assert result.returncode == 0, result.stderr
        assert f"connected to the dask scheduler at {cluster.scheduler_address}" in result.stdout
    np.testing.assert_array_equal(
        read_dataset(address_dir / "out" / "volumes.zarr" / "segmentation" / "threshold_0.5"),
        read_dataset(run.segmentation_url(0.5)),
    )


@pytest.mark.parametrize("cluster, message", [
    ({"kind": "slurm", "slurm": {"partition": "debug"}}, "cluster.slurm.partition: unknown key"),
    ({"kind": "slurm", "slurm": {"walltime": "2 hours"}}, "walltime '2 hours' is not"),
    ({"kind": "address"}, "kind address needs cluster.address"),
    ({"kind": "address", "address": "tcp://127.0.0.1:9"}, "cannot reach a dask scheduler at tcp://127.0.0.1:9"),
    ({"kind": "slurm", "slurm": {"walltime": "00:10:00"}}, "sbatch is not on this machine's PATH"),
])
def test_bad_cluster_sections(tmp_path, small_inputs, cluster, message):
    config = write_config(tmp_path, small_inputs, cluster=cluster)
    # hide sbatch (CI installs SLURM) so the missing-sbatch error shows
    env = {**os.environ, "PATH": os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if not Path(p, "sbatch").exists())}
    result = _cli("run", str(config), cwd=tmp_path, env=env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_worker_setup_limits_threads_and_refuses_other_versions(tmp_path):
    import blockseg
    from blockseg.cluster import VersionMismatch, WorkerSetup

    with _cluster(workers=1) as cluster, Client(cluster) as own:
        own.register_plugin(WorkerSetup(blockseg.__version__, str(tmp_path / "logs")))
        threads = own.run(lambda: os.environ.get("OPENBLAS_NUM_THREADS"))
        assert set(threads.values()) == {"1"}
        assert list((tmp_path / "logs").glob("worker-*.log"))
        with pytest.raises(VersionMismatch, match="runs blockseg"):
            own.register_plugin(WorkerSetup("0.0.0-another"), name="blockseg-other-version")
