"""Tests of blockseg.scheduler.run_stage on a local two-worker dask cluster."""

from __future__ import annotations

import functools
import os
import uuid
from pathlib import Path

import numpy as np
import pytest

from blockseg.blocks import Block, BlockGrid
from blockseg.geometry import Roi
from blockseg.graph.base import BlockOutput, Nodes
from blockseg.graph.sqlite import SqliteGraphStore
from blockseg.scheduler import StageFailed, run_stage

# ---------------------------------------------------------------------------
# block functions: module level, so the workers can unpickle them
# ---------------------------------------------------------------------------


def _output(block: Block) -> BlockOutput:
    """One node per block at the centre of its write ROI, and the block id as result."""
    center = np.array([[o + s / 2 for o, s in zip(block.write_roi.offset, block.write_roi.shape)]], np.float64)
    nodes = Nodes(np.array([block.block_id + 1], np.uint64), center, np.array([1], np.int64))
    return BlockOutput(nodes=nodes, result=str(block.block_id).encode(), stats={"voxels": 10, "size_max": block.block_id})


def _log_attempt(folder: str, block_id: int) -> int:
    """Append one line to the block's attempt log and return how many attempts there were."""
    path = Path(folder) / f"attempts-{block_id}.txt"
    with open(path, "a") as log:
        log.write(f"{os.getpid()}\n")
    return len(path.read_text().splitlines())


def good_block(block: Block, folder: str) -> BlockOutput:
    _log_attempt(folder, block.block_id)
    return _output(block)


def flaky_block(block: Block, folder: str) -> BlockOutput:
    if _log_attempt(folder, block.block_id) == 1:
        raise RuntimeError(f"transient failure of block {block.block_id}")
    return _output(block)


def broken_block(block: Block, folder: str, broken: int) -> BlockOutput:
    _log_attempt(folder, block.block_id)
    if block.block_id == broken:
        raise ValueError(f"bad data in block {block.block_id}")
    return _output(block)


def attempts(folder: Path, block_id: int) -> int:
    path = folder / f"attempts-{block_id}.txt"
    return len(path.read_text().splitlines()) if path.exists() else 0


# ---------------------------------------------------------------------------


GRID = BlockGrid(Roi((0, 0, 0), (40, 60, 50)), block_shape=(20, 20, 30), context=(5, 5, 5))  # 2 x 3 x 2 = 12 blocks


@pytest.fixture
def store(tmp_path):
    s = SqliteGraphStore(tmp_path / "graph.db")
    yield s
    s.close()


def _run(client, store, function, **kwargs):
    kwargs.setdefault("progress", False)
    # a fresh token per run: task keys never meet results of another test's run
    kwargs.setdefault("token", uuid.uuid4().hex)
    return run_stage(client, "stage", GRID, function, store, **kwargs)


def _check_committed(store, block_ids):
    assert store.done_blocks("stage") == set(block_ids)
    nodes = store.read_nodes()
    assert nodes.ids.tolist() == sorted(b + 1 for b in block_ids)
    for node_id, center in zip(nodes.ids.tolist(), nodes.centers):
        roi = GRID.write_roi(node_id - 1)
        assert roi.contains_point(center)
    assert store.block_results("stage") == {b: str(b).encode() for b in block_ids}


def test_all_blocks_committed_and_second_run_submits_nothing(client, store, tmp_path):
    assert GRID.num_blocks == 12
    function = functools.partial(good_block, folder=str(tmp_path))
    report = _run(client, store, function)
    assert report.total == 12
    assert report.submitted == 12 and report.succeeded == 12 and report.skipped == 0
    assert report.failures == []
    assert report.stats == {"voxels": 120, "size_max": 11}
    _check_committed(store, range(12))
    assert all(attempts(tmp_path, b) == 1 for b in range(12))

    again = _run(client, store, function)
    assert again.submitted == 0 and again.succeeded == 0
    assert again.skipped == 12
    assert all(attempts(tmp_path, b) == 1 for b in range(12))  # nothing ran again


def test_transient_failures_are_retried(client, store, tmp_path):
    function = functools.partial(flaky_block, folder=str(tmp_path))
    report = _run(client, store, function, retries=1)
    assert report.failures == []
    assert report.succeeded == 12
    assert report.submitted == 24  # every block twice
    _check_committed(store, range(12))
    assert all(attempts(tmp_path, b) == 2 for b in range(12))


def test_transient_failures_without_retries_fail(client, store, tmp_path):
    function = functools.partial(flaky_block, folder=str(tmp_path))
    with pytest.raises(StageFailed) as info:
        _run(client, store, function, retries=0)
    assert len(info.value.report.failures) == 12
    assert store.done_blocks("stage") == set()


def test_a_block_that_keeps_failing_is_reported_after_the_others(client, store, tmp_path):
    broken = 4
    function = functools.partial(broken_block, folder=str(tmp_path), broken=broken)
    with pytest.raises(StageFailed) as info:
        _run(client, store, function, retries=2)
    error = info.value
    message = str(error)
    assert f"block {broken}" in message
    assert str(GRID.write_roi(broken)) in message
    assert "Traceback (most recent call last)" in message
    assert f"ValueError: bad data in block {broken}" in message
    assert "broken_block" in message  # the frame that raised
    assert "1 of 12 block(s) failed" in message
    (failure,) = error.report.failures
    assert failure.block_id == broken
    assert failure.attempts == 3
    assert failure.worker.startswith("tcp://127.0.0.1")
    assert attempts(tmp_path, broken) == 3
    # every other block ran once and is committed and marked done
    others = [b for b in range(12) if b != broken]
    assert all(attempts(tmp_path, b) == 1 for b in others)
    assert error.report.succeeded == 11
    _check_committed(store, others)

    # a resumed run only retries the failed block
    report = _run(client, store, functools.partial(good_block, folder=str(tmp_path)))
    assert report.skipped == 11 and report.submitted == 1 and report.succeeded == 1
    _check_committed(store, range(12))


def test_block_ids_restrict_the_run(client, store, tmp_path):
    function = functools.partial(good_block, folder=str(tmp_path))
    report = _run(client, store, function, block_ids=[7, 1, 7, 10])
    assert report.total == 3
    assert report.submitted == 3 and report.succeeded == 3
    _check_committed(store, [1, 7, 10])
    assert [b for b in range(12) if attempts(tmp_path, b)] == [1, 7, 10]

    rest = _run(client, store, function)
    assert rest.total == 12 and rest.skipped == 3 and rest.submitted == 9
    _check_committed(store, range(12))
    assert all(attempts(tmp_path, b) == 1 for b in range(12))


def test_small_window_still_runs_every_block(client, store, tmp_path):
    function = functools.partial(flaky_block, folder=str(tmp_path))
    report = _run(client, store, function, retries=3, window_per_thread=1)
    assert report.succeeded == 12
    _check_committed(store, range(12))
