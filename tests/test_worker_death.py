"""Blocks that kill their worker: memory limit, a signal; no worker left. Never a hang."""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from blockseg.blocks import Block, BlockGrid
from blockseg.cluster import open_client
from blockseg.config import ClusterConfig
from blockseg.demo import write_demo_config, write_demo_inputs
from blockseg.geometry import Roi
from blockseg.graph.base import BlockOutput
from blockseg.graph.sqlite import SqliteGraphStore
from blockseg.scheduler import NoWorkers, StageFailed, run_stage

# ---------------------------------------------------------------------------
# block functions: module level, so the workers can unpickle them
# ---------------------------------------------------------------------------


def _count(folder: str, block_id: int) -> None:
    with open(os.path.join(folder, f"attempts-{block_id}.txt"), "a") as handle:
        handle.write(f"{os.getpid()}\n")


def attempts(folder, block_id: int) -> int:
    path = os.path.join(folder, f"attempts-{block_id}.txt")
    return len(open(path).read().splitlines()) if os.path.exists(path) else 0


def hog_block(block: Block, folder: str, hog: int) -> BlockOutput:
    """Block ``hog`` touches memory until its nanny stops the worker; the others sleep a little."""
    _count(folder, block.block_id)
    if block.block_id == hog:
        chunks = []
        for _ in range(200):  # 200 x 32 MiB: far beyond the test's limit
            chunks.append(np.ones(4 * 2**20, np.float64))
            time.sleep(0.02)  # the nanny looks every 100 ms
    time.sleep(0.2)
    return BlockOutput(stats={"voxels": 1})


def segfault_block(block: Block, folder: str, bad: int) -> BlockOutput:
    """Block ``bad`` dies of SIGSEGV, as a crash in a native library would."""
    _count(folder, block.block_id)
    if block.block_id == bad:
        os.kill(os.getpid(), signal.SIGSEGV)
        time.sleep(10)
    time.sleep(0.2)
    return BlockOutput(stats={"voxels": 1})


def exit_all_block(block: Block, folder: str) -> BlockOutput:
    """Every block kills its worker: the stage must end, not wait."""
    _count(folder, block.block_id)
    os._exit(3)


# ---------------------------------------------------------------------------

GRID = BlockGrid(Roi((0, 0, 0), (20, 20, 60)), block_shape=(20, 20, 20), context=(0, 0, 0))  # 3 blocks


def _cluster(memory_limit: str = "1GiB", workers: int = 1) -> ClusterConfig:
    return ClusterConfig(local={"workers": workers, "memory_limit": memory_limit, "dashboard": False})


@pytest.fixture
def store(tmp_path):
    s = SqliteGraphStore(tmp_path / "graph.db")
    yield s
    s.close()


def test_block_over_the_memory_limit_is_reported_and_the_others_finish(tmp_path, store):
    start = time.monotonic()
    with open_client(_cluster("400MiB"), quiet=True) as client:
        with pytest.raises(StageFailed) as failed:
            run_stage(
                client, "hog", GRID, functools.partial(hog_block, folder=str(tmp_path), hog=1), store,
                retries=1, progress=False,
            )
    assert time.monotonic() - start < 120
    report = failed.value.report
    assert [f.block_id for f in report.failures] == [1]
    assert report.succeeded == 2
    assert store.done_blocks("hog") == {0, 2}
    failure = report.failures[0]
    assert failure.attempts == 2 and attempts(tmp_path, 1) == 2  # retries=1: two deaths, not 2 x 4
    assert "worker died: memory limit 400 MiB exceeded" in failure.traceback
    assert "Traceback" not in failure.traceback
    assert "block 1 (write ROI" in str(failed.value)


_SEGFAULT_RUN = """
import functools, json, sys
sys.path.insert(0, {tests!r})
from blockseg.cluster import open_client
from blockseg.graph.sqlite import SqliteGraphStore
from blockseg.scheduler import StageFailed, run_stage
from test_worker_death import GRID, _cluster, segfault_block

store = SqliteGraphStore({db!r})
with open_client(_cluster(workers=2), quiet=True) as client:
    try:
        run_stage(client, "segv", GRID, functools.partial(segfault_block, folder={folder!r}, bad=2), store,
                  retries=2, progress=False)
        result = {{"failed": None}}
    except StageFailed as failed:
        result = {{"failed": [[f.block_id, f.traceback] for f in failed.report.failures]}}
result["done"] = sorted(store.done_blocks("segv"))
store.close()
print(json.dumps(result))
"""


def test_block_killed_by_a_signal_names_the_signal(tmp_path):
    # In its own interpreter: after other tests' clusters in this process,
    # distributed's client sometimes met an asyncio object of an earlier loop
    # ("bound to a different event loop") while workers were being killed.
    script = _SEGFAULT_RUN.format(
        tests=os.path.dirname(__file__), db=str(tmp_path / "graph.db"), folder=str(tmp_path)
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["failed"] is not None, "the segfaulting block was not reported"
    assert [block_id for block_id, _ in outcome["failed"]] == [2]
    assert outcome["done"] == [0, 1]
    assert attempts(tmp_path, 2) == 3
    assert "worker died: killed by signal 11 (SIGSEGV)" in outcome["failed"][0][1]


def test_no_worker_left_ends_the_stage(tmp_path, store):
    """The nannies give up on workers that keep dying: the stage says so instead of waiting."""
    start = time.monotonic()
    with open_client(_cluster(), quiet=True) as client:
        # stop the nanny from bringing the worker back, as when a node is lost
        cluster = client.cluster
        for nanny in list(cluster.workers.values()):
            cluster.sync(nanny.close)
        with pytest.raises(NoWorkers, match="no dask worker is left for 3 s"):
            run_stage(
                client, "none", GRID, functools.partial(exit_all_block, folder=str(tmp_path)), store,
                retries=1, progress=False, worker_wait=3,
            )
    assert time.monotonic() - start < 60


def test_memory_case_from_the_issue_exits_1_with_one_report(tmp_path):
    """The demo volume as one block, 1 worker of 250 MiB: exit 1 within minutes, naming block and limit."""
    write_demo_inputs(tmp_path)  # 64 x 192 x 192 voxels of 20 x 10 x 10 nm
    config = write_demo_config(tmp_path, {
        "block_shape": [1280, 1920, 1920],
        "cluster.local.workers": 1,
        "cluster.local.memory_limit": "250MiB",
        "cluster.local.dashboard": False,
        "scheduler.progress": False,
        "scheduler.retries": 1,
    })
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "blockseg.cli", "run", str(config), "--stages", "check,fragments"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    seconds = time.monotonic() - start
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert seconds < 300
    assert "block 0 (write ROI [0:1280, 0:1920, 0:1920] nm) failed 2 time(s)" in result.stderr, result.stderr
    assert "worker died: memory limit 250 MiB exceeded" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "KilledWorker" not in result.stderr, result.stderr


# -- the pre-flight estimate ---------------------------------------------------


class _FakeClient:
    """Answers scheduler_info like a client of one worker."""

    def __init__(self, memory_limit: int, memory: int, nthreads: int = 1) -> None:
        self.worker = {"memory_limit": memory_limit, "nthreads": nthreads, "metrics": {"memory": memory}}

    def scheduler_info(self, n_workers: int = 5) -> dict:
        return {"workers": {"tcp://127.0.0.1:1": self.worker}}


def _demo_run(folder, **overrides):
    from blockseg.config import load_config
    from blockseg.pipeline import open_run

    write_demo_inputs(folder, shape=(32, 64, 64), seed=1)
    return open_run(load_config(write_demo_config(folder, overrides)))


def test_block_memory_counts_what_a_block_reads_and_writes(tmp_path):
    from blockseg.memory import block_memory
    from blockseg.pipeline import STAGES

    run = _demo_run(tmp_path, **{"block_shape": [320, 320, 320], "stages.agglomerate": {"context": [40, 40, 40]}})
    try:
        # 16 x 32 x 32 voxels written, (16 + 4) x (32 + 8) x (32 + 8) read
        agglomerate = block_memory(run, STAGES["agglomerate"])
        assert agglomerate.write_voxels == (16, 32, 32) and agglomerate.read_voxels == (20, 40, 40)
        # float32 affinities (3 channels) and uint64 fragments over the read ROI; edges are no volume
        assert agglomerate.nbytes == 20 * 40 * 40 * (3 * 4 + 8)
        relabel = block_memory(run, STAGES["relabel"])
        assert relabel.nbytes == 16 * 32 * 32 * (8 + 8)  # fragments in, one uint64 segmentation out
        assert block_memory(run, STAGES["segments"]) is None  # a global step has no blocks
    finally:
        run.store.close()


def test_preflight_refuses_blocks_that_cannot_fit_and_names_both_numbers(tmp_path):
    from blockseg.config import ConfigError
    from blockseg.memory import MIB, block_memory, check_block_memory
    from blockseg.pipeline import select_stages

    run = _demo_run(tmp_path, block_shape=[640, 640, 640])  # the whole 32 x 64 x 64 volume is one block
    try:
        stages = select_stages(run, None)
        worst = max((block_memory(run, stage) for stage in stages if block_memory(run, stage)), key=lambda e: e.nbytes)
        in_use = 60 * MIB
        check_block_memory(run, stages, _FakeClient(memory_limit=1024 * MIB, memory=in_use))
        # the nanny stops a worker at 95 % of its limit, and an eighth of the
        # limit is kept for cached input chunks: leave half the block's need
        limit = int((in_use + worst.nbytes / 2) / (0.95 - 1 / 8))
        with pytest.raises(ConfigError) as refused:
            check_block_memory(run, stages, _FakeClient(memory_limit=limit, memory=in_use))
        message = str(refused.value)
        assert "\n" not in message
        assert f"stage {worst.stage} needs at least {worst.nbytes / MIB:.0f} MiB per block" in message, message
        assert f"a worker has {worst.nbytes / 2 / MIB:.0f} MiB for a block (memory limit {limit / MIB:.0f} MiB" in message
        # four threads share a worker: each block gets a quarter
        with pytest.raises(ConfigError, match="shared by 4 threads"):
            check_block_memory(run, stages, _FakeClient(memory_limit=limit, memory=in_use, nthreads=4))
    finally:
        run.store.close()


def test_cli_refuses_an_impossible_config_before_any_block_runs(tmp_path):
    write_demo_inputs(tmp_path)
    config = write_demo_config(tmp_path, {
        "block_shape": [1280, 1920, 1920],
        "cluster.local.workers": 1,
        "cluster.local.memory_limit": "120MiB",
        "cluster.local.dashboard": False,
        "scheduler.progress": False,
    })
    result = subprocess.run(
        [sys.executable, "-m", "blockseg.cli", "run", str(config)], cwd=tmp_path, capture_output=True, text=True,
        timeout=300,
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.startswith("blockseg")]
    assert len(lines) == 1 and "needs at least" in lines[0] and "memory limit 120 MiB" in lines[0], result.stderr
    assert "block(s) done" not in result.stdout  # not even the input check ran


# ---------------------------------------------------------------------------
# a worker that dies while the local cluster starts (found by benchmarks/chaos.py:
# every such kill ended the run with distributed's traceback)
# ---------------------------------------------------------------------------


def test_worker_death_while_the_cluster_starts_starts_it_again(monkeypatch, caplog):
    import blockseg.cluster as cluster_module

    real = cluster_module._new_local_cluster
    calls = []

    def dies_once(config):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("Nanny failed to start.")  # what LocalCluster raises when a worker dies starting
        return real(config)

    monkeypatch.setattr(cluster_module, "_new_local_cluster", dies_once)
    monkeypatch.setattr(logging.getLogger("blockseg"), "propagate", True)  # a CLI test may have turned it off
    with caplog.at_level("WARNING", logger="blockseg"):
        with open_client(_cluster(), quiet=True) as client:
            assert client.submit(int, "7").result() == 7
    assert len(calls) == 2
    assert "a dask worker died while the local cluster started (Nanny failed to start.)" in caplog.text


def test_a_cluster_that_never_starts_is_one_line(monkeypatch):
    import blockseg.cluster as cluster_module

    def never(config):
        raise RuntimeError("Nanny failed to start.")

    monkeypatch.setattr(cluster_module, "_new_local_cluster", never)
    with pytest.raises(NoWorkers) as error:
        with open_client(_cluster(), quiet=True):
            pass
    message = str(error.value)
    assert "\n" not in message
    assert f"did not start in {cluster_module.START_ATTEMPTS} tries (Nanny failed to start.)" in message


def test_distributed_errors_in_a_worker_go_to_its_log_file_not_the_terminal(tmp_path, capfd):
    def complain():
        import logging

        try:
            raise ConnectionResetError("Connection reset by peer")
        except ConnectionResetError:
            logging.getLogger("distributed.worker").exception("failed during get data (test)")
        return True

    with open_client(_cluster(), quiet=True, log_dir=tmp_path) as client:
        assert all(client.run(complain).values())
    err = capfd.readouterr().err
    assert "failed during get data (test)" not in err and "Traceback" not in err, err
    logs = "".join(path.read_text() for path in tmp_path.glob("worker-*.log"))
    assert "failed during get data (test)" in logs and "ConnectionResetError" in logs
