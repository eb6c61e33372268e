"""Workers commit their own blocks (file and PostgreSQL stores): retries, a dead worker, resume.

The oracle is the same stage run on the SQLite store, where the driver
commits every block: the rows must be the same, the done marks too, and
on the stores that workers write the driver must commit nothing.
"""

from __future__ import annotations

import functools
import os
import uuid
from pathlib import Path

import numpy as np
import pytest

from blockseg.blocks import Block, BlockGrid
from blockseg.cluster import open_client
from blockseg.config import ClusterConfig
from blockseg.geometry import Roi
from blockseg.graph import open_store
from blockseg.graph.base import BlockOutput, Edges, Nodes, StageState
from blockseg.scheduler import StageFailed, run_stage

GRID = BlockGrid(Roi((0, 0, 0), (40, 60, 50)), block_shape=(20, 20, 30), context=(0, 0, 0))  # 12 blocks


def _attempt(folder: str, block_id: int) -> int:
    path = Path(folder) / f"attempts-{block_id}.txt"
    with open(path, "a") as log:
        log.write(f"{os.getpid()}\n")
    return len(path.read_text().splitlines())


def _die_inside_the_commit() -> None:
    """Make this worker's next commit die halfway: rows written, done mark not (one transaction, one rename)."""
    import blockseg.graph.files as files
    from blockseg.graph.postgres import PostgresGraphStore

    real_copy = PostgresGraphStore._copy

    def copy_then_die(cursor, table, names, columns):
        real_copy(cursor, table, names, columns)
        if table == "edges":
            os._exit(4)  # inside the transaction: nodes and edges copied, no done mark yet

    def write_then_die(path, data):
        # the temporary file written, never renamed into place
        with open(path.with_name(f"{path.name}{files._TMP}dying"), "wb") as handle:
            handle.write(data[: len(data) // 2])
        os._exit(4)

    PostgresGraphStore._copy = staticmethod(copy_then_die)
    files._atomic_write_bytes = write_then_die


def rows_block(block: Block, folder: str, dies: int, raises: int, dies_in_commit: int = -1) -> BlockOutput:
    """Three nodes and a chain of edges per block; block ``dies`` kills its worker once, ``raises`` raises once,
    ``dies_in_commit`` kills its worker once in the middle of committing (where workers commit)."""
    attempt = _attempt(folder, block.block_id)
    if block.block_id == dies and attempt == 1:
        os._exit(3)
    if block.block_id == dies_in_commit and attempt == 1:
        _die_inside_the_commit()
    if block.block_id == raises and attempt == 1:
        raise RuntimeError("transient")
    ids = np.arange(1, 4, dtype=np.uint64) + np.uint64(block.block_id * 100)
    center = [o + s / 2 for o, s in zip(block.write_roi.offset, block.write_roi.shape)]
    nodes = Nodes(ids, np.tile(center, (3, 1)).astype(np.float64), np.array([5, 6, 7], np.int64))
    # edges to the next block's first fragment too, as a block's edges across its face
    u = np.array([ids[0], ids[1], ids[2]], np.uint64)
    v = np.array([ids[1], ids[2], (block.block_id + 1) * 100 + 1], np.uint64)
    scores = (np.arange(3, dtype=np.float32) + block.block_id) / 40
    return BlockOutput(nodes=nodes, edges=Edges(u, v, scores), result=f"r{block.block_id}".encode(),
                       stats={"voxels": 1})


@pytest.fixture(scope="module")
def two_workers():
    with open_client(ClusterConfig(local={"workers": 2, "dashboard": False}), quiet=True) as client:
        yield client


def _url(backend: str, tmp_path: Path, request) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'graph.db'}"
    if backend == "files":
        return f"file://{tmp_path / 'graph'}"
    server = request.getfixturevalue("postgres")
    return server.url(server.create_database(f"commits_{uuid.uuid4().hex[:10]}"), luts=str(tmp_path / "luts"))


def _stage(client, store, folder: Path):
    # a worker that would die inside a commit only where workers commit (else it would stay armed)
    dies_in_commit = 9 if store.workers_write else -1
    function = functools.partial(rows_block, folder=str(folder), dies=2, raises=5, dies_in_commit=dies_in_commit)
    return run_stage(client, "rows", GRID, function, store, retries=2, progress=False)


@pytest.mark.parametrize("backend", ["files", "postgres"])
def test_workers_commit_their_blocks_like_the_driver_would(tmp_path, two_workers, backend, request, monkeypatch):
    oracle_folder, folder = tmp_path / "oracle", tmp_path / backend
    oracle_folder.mkdir()
    folder.mkdir()
    oracle = open_store(_url("sqlite", oracle_folder, request))
    report = _stage(two_workers, oracle, oracle_folder)
    assert report.succeeded == 12

    store = open_store(_url(backend, folder, request))
    assert store.workers_write
    committed_here = []
    real = type(store).commit_block
    monkeypatch.setattr(type(store), "commit_block", lambda self, *a: committed_here.append(a) or real(self, *a))
    report = _stage(two_workers, store, folder)
    assert report.succeeded == 12 and report.stats["voxels"] == 12  # stats still reach the driver
    assert committed_here == [], "the driver committed blocks; the workers should have"
    # block 2 killed its worker once, block 5 raised once, block 9's worker died inside
    # its commit: each retried and committed once, nothing of the dead commit left (a block
    # that ran beside them on a dying worker was retried too)
    for block_id in (2, 5, 9):
        assert len((folder / f"attempts-{block_id}.txt").read_text().split()) >= 2

    assert store.done_blocks("rows") == oracle.done_blocks("rows") == set(range(12))
    assert store.block_results("rows") == oracle.block_results("rows")
    a, b = oracle.read_nodes(), store.read_nodes()
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.centers, b.centers)
    np.testing.assert_array_equal(a.sizes, b.sizes)
    a, b = oracle.read_edges(), store.read_edges()
    assert len(a) == 36
    np.testing.assert_array_equal(a.u, b.u)
    np.testing.assert_array_equal(a.v, b.v)
    np.testing.assert_array_equal(a.scores, b.scores)

    # resume: nothing left to do; after forgetting one block's done mark only that block reruns,
    # and its rerun replaces its rows instead of adding to them
    assert _stage(two_workers, store, folder).submitted == 0
    if backend == "files":
        (folder / "graph" / "blocks" / "rows" / "7.npz").unlink()
    else:
        store._db.execute("DELETE FROM done WHERE stage = 'rows' AND block = 7")
    again = _stage(two_workers, store, folder)
    assert again.submitted == 1 and again.succeeded == 1
    assert len(store.read_edges()) == 36 and len(store.read_nodes()) == 36
    oracle.close()
    store.close()


def reset_during_block(block: Block, folder: str, store_url: str, resets: int) -> BlockOutput:
    """Block ``resets`` resets the stage while it runs, as a new driver with another config would."""
    if block.block_id == resets:
        store = open_store(store_url)
        store.drop_stage("rows")
        store.set_stage_state("rows", StageState("another config", "new"))
        store.close()
    return rows_block(block, folder, dies=-1, raises=-1)


@pytest.mark.parametrize("backend", ["files", "postgres"])
def test_a_block_of_a_reset_stage_is_not_committed(tmp_path, two_workers, backend, request):
    """A worker's commit carries the stage's token: a block that outlived its stage's reset lands nowhere."""
    store = open_store(_url(backend, tmp_path, request))
    store.set_stage_state("rows", StageState("a config", "old"))
    function = functools.partial(reset_during_block, folder=str(tmp_path), store_url=store.url, resets=3)
    # the file store checks the token just before its write, not with it (files have no
    # transaction): a commit racing the reset could land there, so it runs block 3 alone
    blocks = [3] if backend == "files" else None
    with pytest.raises(StageFailed) as failed:
        run_stage(two_workers, "rows", GRID, function, store, retries=0, progress=False, token="old", block_ids=blocks)
    failures = {f.block_id: f.traceback for f in failed.value.report.failures}
    assert 3 in failures and "StaleCommit" in failures[3] and "not committed" in failures[3], failures[3]
    # only blocks committed after the reset would be there, and every one was refused
    assert store.done_blocks("rows") == set() and len(store.read_edges()) == 0
    assert store.stage_state("rows") == StageState("another config", "new")
    store.close()
