"""Issue 16 B: LUTs computed on the cluster equal the single-process ones; scores reduced on the cluster equal the whole volume's."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from blockseg.config import load_config
from blockseg.distributed_segments import distributed_luts, scratch_root
from blockseg.graph import BlockOutput, Edges, FileGraphStore, Nodes, SqliteGraphStore
from blockseg.graph.base import StageState
from blockseg.pipeline import open_run, run_pipeline
from blockseg.segments import connected_component_luts
from helpers import FLYEM, write_flyem_inputs, read_dataset, write_config
from workers import evaluate as evaluate_worker

THRESHOLDS = [0.1, 0.3, 0.5, 0.7, 0.9, 1.0]


def assert_luts_equal_oracle(store, thresholds) -> None:
    """The stored LUTs equal connected_component_luts over every node and edge, exactly."""
    nodes, edges = store.read_nodes(), store.read_edges()
    checked = 0
    for threshold, fragments, segments in connected_component_luts(nodes.ids, edges.u, edges.v, edges.scores, thresholds):
        got_fragments, got_segments = store.read_lut(threshold)
        np.testing.assert_array_equal(got_fragments, fragments)
        np.testing.assert_array_equal(got_segments, segments)
        checked += 1
    assert checked == len(thresholds)


def _spanning_graph(store, num_blocks: int, ids_per_block: int, seed: int):
    """Blocks in a 1 x 4 x 5 grid (and more layers), edges to neighbours up to a layer away, a few long ones.

    Low scores on a chain through every block make components that span many blocks.
    """
    rng = np.random.default_rng(seed)
    for stage in ("fragments", "agglomerate"):
        store.set_stage_state(stage, StageState("test", "test"))
    ids = []
    for block in range(num_blocks):
        n = int(rng.integers(3, 25))
        block_ids = (np.arange(1, n + 1) + block * ids_per_block).astype(np.uint64)
        store.commit_block("fragments", block, BlockOutput(nodes=Nodes(block_ids, np.zeros((n, 3)), np.ones(n, np.int64))))
        ids.append(block_ids)
    for block in range(num_blocks):
        neighbours = [c for c in (block, block + 1, block + 5, block + 20, block + 21) if c < num_blocks]
        candidates = np.concatenate([ids[c] for c in neighbours])
        m = int(rng.integers(4, 50))
        u, v = rng.choice(ids[block], m), rng.choice(candidates, m)
        if block + 1 < num_blocks:  # the chain: the first fragment of each block to the next block's
            u = np.append(u, ids[block][0])
            v = np.append(v, ids[block + 1][0])
        pairs = np.unique(np.stack([np.minimum(u, v), np.maximum(u, v)], 1), axis=0)
        pairs = pairs[pairs[:, 0] != pairs[:, 1]]
        own = pairs[:, 0] // np.uint64(ids_per_block) == np.uint64(block)
        pairs = pairs[own]
        scores = rng.random(len(pairs)).astype(np.float32)
        scores[np.isin(pairs[:, 0], ids[block][:1])] = 0.05
        if block == 3:  # a far edge, to a fragment no block lists as a node
            pairs = np.vstack([pairs, [[ids[block][-1], np.uint64(47 * ids_per_block + 999)]]])
            scores = np.append(scores, np.float32(0.2))
        store.commit_block("agglomerate", block, BlockOutput(edges=Edges(pairs[:, 0], pairs[:, 1], scores)))


@pytest.mark.parametrize("kind", ["file", "sqlite"])
def test_components_spanning_many_blocks(tmp_path, client, kind):
    store = FileGraphStore(tmp_path / "graph") if kind == "file" else SqliteGraphStore(tmp_path / "graph.db")
    num_blocks, ids_per_block = 60, 1000
    _spanning_graph(store, num_blocks, ids_per_block, seed=3)
    for blocks_per_piece in (1, 2, 3, 7, 60, None):
        counts = distributed_luts(client, store, ["fragments", "agglomerate"], THRESHOLDS, num_blocks, ids_per_block,
                                  blocks_per_piece=blocks_per_piece)
        assert_luts_equal_oracle(store, THRESHOLDS)
        ids, segments = store.read_lut(0.1)
        assert counts[0.1] == (len(ids), len(np.unique(segments)))
        # the chain at score 0.05 joins a fragment of every block into one segment
        assert (segments == np.uint64(1)).sum() >= num_blocks
        # a relabel block reads its own rows from its piece
        for block in (0, 3, 47, 59):
            low = block * ids_per_block
            part_ids, part_segments = store.read_lut_range(0.5, low, low + ids_per_block)
            all_ids, all_segments = store.read_lut(0.5)
            inside = (all_ids >= low) & (all_ids < low + ids_per_block)
            np.testing.assert_array_equal(part_ids, all_ids[inside])
            np.testing.assert_array_equal(part_segments, all_segments[inside])
    store.close()


class _RecordingClient:
    """A client that keeps every future the stage submits (their results stay gatherable); may fail its last gather."""

    def __init__(self, client, fail_last_gather: bool = False) -> None:
        self.client = client
        self.futures = []
        self.gathers = 0
        self.fail_last_gather = fail_last_gather

    def submit(self, *args, **kwargs):
        future = self.client.submit(*args, **kwargs)
        self.futures.append(future)
        return future

    def gather(self, futures):
        self.gathers += 1
        result = self.client.gather(futures)
        if self.fail_last_gather and self.gathers == 2:  # the first gathers the pieces, the second the LUT writes
            raise RuntimeError("the driver fails after the LUT pieces are written")
        return result

    def __getattr__(self, name):
        return getattr(self.client, name)


def test_stage_state_goes_to_scratch_and_is_removed(tmp_path, client):
    """Tasks return paths and numbers, not arrays; the scratch folder is fresh per run and gone after it, failed or not."""
    store = FileGraphStore(tmp_path / "graph")
    num_blocks, ids_per_block = 60, 1000
    _spanning_graph(store, num_blocks, ids_per_block, seed=5)
    stages = ["fragments", "agglomerate"]
    # a crashed run's scratch: files named as this run names its own, holding garbage
    root = scratch_root(store)
    assert root.parent == store.lut_dir.parent and not root.is_relative_to(store.lut_dir)
    stale = root / "0123abcd"
    stale.mkdir(parents=True)
    np.save(stale / "piece_0.npy", np.full((1 + len(THRESHOLDS), 5), 7, np.uint64))
    recording = _RecordingClient(client)
    stats = {}
    distributed_luts(recording, store, stages, THRESHOLDS, num_blocks, ids_per_block, blocks_per_piece=4, stats=stats)
    assert_luts_equal_oracle(store, THRESHOLDS)
    assert stats["pieces"] == 15 and stats["scratch_bytes"] > 0
    assert not root.exists(), "the scratch folder outlived the stage"
    # every task's result is a path or a few numbers: the scheduler and the workers hold no arrays between tasks
    results = recording.client.gather(recording.futures)
    assert len(results) > 15 * len(THRESHOLDS)
    for result in results:
        assert len(pickle.dumps(result)) < 1024 and "ndarray" not in repr(type(result)), type(result)
    del results
    recording.futures.clear()

    failing = _RecordingClient(client, fail_last_gather=True)
    with pytest.raises(RuntimeError, match="driver fails"):
        distributed_luts(failing, store, stages, THRESHOLDS, num_blocks, ids_per_block, blocks_per_piece=4)
    failing.futures.clear()
    assert not root.exists(), "a failed stage left its scratch folder"
    assert not store.lut_thresholds(), "a failed stage declared a LUT complete"
    store.close()


def _oracle_scores(run, thresholds):
    """Scores as the driver computed them before: every block's table summed in one process."""
    from blockseg.task import unpack_arrays

    table = evaluate_worker.merge_contingency(tuple(unpack_arrays(d)) for d in run.store.block_results("evaluate").values())
    scores = {"fragments": evaluate_worker.scores_from_contingency(table)}
    for t in thresholds:
        lut_ids, lut_segments = run.store.read_lut(t)
        scores[repr(float(t))] = evaluate_worker.scores_from_contingency(
            evaluate_worker.relabel_contingency(table, lut_ids, lut_segments))
    return scores


@pytest.mark.parametrize("graph", ["sqlite", "file"])
def test_demo_luts_and_scores(tmp_path, demo_inputs, client, graph):
    url = "sqlite:///out/graph.db" if graph == "sqlite" else "file://out/graph"
    config = load_config(write_config(tmp_path, demo_inputs, block_voxels=(16, 32, 32), graph=url,
                                      stages={"relabel": {"thresholds": [0.3, 0.5]}}))
    run = open_run(config)
    run_pipeline(run, client)
    thresholds = config.stages.segments.thresholds
    assert_luts_equal_oracle(run.store, thresholds)
    # scores reduced on the cluster: as the driver summed them, and as the whole volume scores
    oracle = _oracle_scores(run, thresholds)
    assert run.scores["fragments"] == oracle["fragments"]
    for t in thresholds:
        assert run.scores["thresholds"][repr(float(t))] == oracle[repr(float(t))]
    truth = read_dataset(run.ground_truth.url)
    whole = evaluate_worker.evaluate_arrays(read_dataset(run.fragments_url), truth)
    assert run.scores["fragments"] == pytest.approx(whole, rel=1e-12, abs=1e-12)
    for t in (0.3, 0.5):
        whole = evaluate_worker.evaluate_arrays(read_dataset(run.segmentation_url(t)), truth)
        assert run.scores["thresholds"][repr(t)] == pytest.approx(whole, rel=1e-12, abs=1e-12)
    # a graph this small is one piece in the pipeline: the tree of joins, with pieces of 1 and 5 blocks
    for blocks_per_piece in (1, 5):
        distributed_luts(client, run.store, ["fragments", "agglomerate"], thresholds, run.grid().num_blocks,
                         run.ids_per_block, blocks_per_piece=blocks_per_piece)
        assert_luts_equal_oracle(run.store, thresholds)
    run.store.close()


@pytest.mark.skipif(not FLYEM.exists(), reason=f"real data missing: {FLYEM} (see ../shared/data/README.md)")
def test_flyem_luts_equal_single_process(tmp_path, client):
    inputs, voxel_size, labels = write_flyem_inputs(tmp_path)
    config = load_config(write_config(tmp_path, inputs, block_voxels=(64, 64, 64), voxel_size=voxel_size))
    run = open_run(config)
    run_pipeline(run, client, stages=["check", "fragments", "agglomerate", "segments"])
    thresholds = config.stages.segments.thresholds
    assert_luts_equal_oracle(run.store, thresholds)
    # and with other piece sizes: one block per piece (a deep tree) and one piece
    for blocks_per_piece in (1, 64):
        distributed_luts(client, run.store, ["fragments", "agglomerate"], thresholds, run.grid().num_blocks,
                         run.ids_per_block, blocks_per_piece=blocks_per_piece)
        assert_luts_equal_oracle(run.store, thresholds)
    run.store.close()


# The driver is killed while the segments stage writes its LUTs: after the
# workers wrote pieces, before (or after) the first LUT's index. The patch
# below only adds a pause there and a file saying the pause began.
_PAUSED_DRIVER = """
import sys, time
from pathlib import Path
import blockseg.lut_pieces as lut_pieces
original = lut_pieces.write_index
def paused(folder, *args, **kwargs):
    if {after}:
        original(folder, *args, **kwargs)
    Path(sys.argv[1]).write_text("paused")
    time.sleep(600)
lut_pieces.write_index = paused
from blockseg.cli import main
sys.exit(main(["run", sys.argv[2]]))
"""


@pytest.mark.parametrize("after_first_index", [False, True])
def test_driver_killed_during_segments_resumes_to_identical_luts(tmp_path, demo_inputs, after_first_index):
    options = dict(block_voxels=(16, 32, 32), cluster={"local": {"workers": 2, "dashboard": False}},
                   graph="file://out/graph")
    killed_dir = tmp_path / "killed"
    killed_dir.mkdir()
    config = write_config(killed_dir, demo_inputs, **options)
    marker = tmp_path / "paused"
    process = subprocess.Popen(
        [sys.executable, "-c", _PAUSED_DRIVER.format(after=after_first_index), str(marker), str(config)],
        cwd=killed_dir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    deadline = time.time() + 300
    while not marker.exists():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.time() < deadline, "the segments stage never began writing"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    store = FileGraphStore(killed_dir / "out" / "graph")
    assert not store.done_blocks("segments")
    assert list(store.lut_dir.glob("threshold_*/piece_*.npy")), "no piece was written before the kill"

    resumed = subprocess.run([sys.executable, "-m", "blockseg.cli", "run", str(config)], cwd=killed_dir,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    thresholds = load_config(config).stages.segments.thresholds
    assert store.lut_thresholds() == sorted(thresholds)
    assert_luts_equal_oracle(store, thresholds)
