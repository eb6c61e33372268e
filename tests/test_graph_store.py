"""The graph store conformance suite: every backend runs every test.

Rows, attributes, the ledger, ROI queries, LUTs, idempotent rewrites, drops
and persistence; then a writer killed in the middle of a block.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from blockseg.geometry import Roi
from blockseg.graph import open_store
from blockseg.graph.base import BlockOutput, Edges, Nodes, StageState, StaleCommit
from blockseg.graph.files import FileGraphStore
from blockseg.graph.postgres import PostgresGraphStore
from blockseg.graph.sqlite import SqliteGraphStore

BACKENDS = ("sqlite", "files", "postgres")
CLASSES = {"sqlite": SqliteGraphStore, "files": FileGraphStore, "postgres": PostgresGraphStore}


def url_for(backend: str, folder, request=None) -> str:
    if backend == "postgres":
        # a fresh database per test; the session's server (a skip where there is none)
        server = request.getfixturevalue("postgres")
        database = server.create_database(f"conformance_{uuid.uuid4().hex[:12]}")
        return server.url(database, luts=str(folder / "luts"))
    return f"sqlite:///{folder / 'graph.db'}" if backend == "sqlite" else f"file://{folder / 'graph'}"

BIG = 2**62 + 12345  # near the top of what fits a signed 64 bit SQLite integer


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    s = open_store(url_for(request.param, tmp_path / "sub", request))
    yield s
    s.close()


def nodes(ids, centers, sizes=None) -> Nodes:
    ids = np.asarray(ids, np.uint64)
    sizes = np.arange(1, len(ids) + 1, dtype=np.int64) if sizes is None else np.asarray(sizes, np.int64)
    return Nodes(ids, np.asarray(centers, np.float64).reshape(len(ids), 3), sizes)


def edges(pairs, scores) -> Edges:
    pairs = np.asarray(pairs, np.uint64).reshape(-1, 2)
    return Edges(pairs[:, 0].copy(), pairs[:, 1].copy(), np.asarray(scores, np.float32))


def edge_set(e: Edges) -> set[tuple[int, int, float]]:
    return {(int(u), int(v), float(s)) for u, v, s in zip(e.u, e.v, e.scores)}


def test_commit_round_trip_with_large_ids(store):
    ids = [BIG, BIG + 1, BIG + 2**40, 7]
    centers = [[10.5, 20, 30], [11, 21, 31], [12, 22, 32.25], [0, 0, 0]]
    sizes = [100, 1, 2**40, 3]
    store.commit_block("fragments", 3, BlockOutput(nodes=nodes(ids, centers, sizes)))
    store.commit_block(
        "agglomerate", 3, BlockOutput(edges=edges([[BIG, BIG + 1], [7, BIG + 2**40]], [0.25, 0.75]))
    )
    got = store.read_nodes()
    assert got.ids.dtype == np.uint64
    order = np.argsort(np.asarray(ids, np.uint64))
    np.testing.assert_array_equal(got.ids, np.asarray(ids, np.uint64)[order])
    assert int(got.ids[-1]) == BIG + 2**40  # no precision lost through float or sign casts
    np.testing.assert_array_equal(got.centers, np.asarray(centers, np.float64)[order])
    np.testing.assert_array_equal(got.sizes, np.asarray(sizes, np.int64)[order])
    e = store.read_edges()
    assert e.u.dtype == np.uint64 and e.v.dtype == np.uint64
    assert edge_set(e) == {(BIG, BIG + 1, 0.25), (7, BIG + 2**40, 0.75)}
    assert store.done_blocks("fragments") == {3}
    assert store.done_blocks("agglomerate") == {3}
    assert store.done_blocks("relabel") == set()


def test_empty_store_reads_empty(store):
    assert len(store.read_nodes()) == 0
    assert store.read_nodes().centers.shape == (0, 3)
    assert len(store.read_edges()) == 0
    assert len(store.read_edges(Roi((0, 0, 0), (1, 1, 1)))) == 0
    assert list(store.iter_edges()) == []
    assert store.stage_state("fragments") is None
    assert store.block_results("check") == {}


def _random_graph(store, rng, n_nodes=60, n_edges=150):
    ids = np.arange(1, n_nodes + 1, dtype=np.uint64) * 1000 + BIG
    # integer centres on a coarse grid so that many sit exactly on ROI faces
    centers = rng.integers(0, 5, (n_nodes, 3)).astype(np.float64) * 10
    half = n_nodes // 2
    store.commit_block("fragments", 0, BlockOutput(nodes=nodes(ids[:half], centers[:half])))
    store.commit_block("fragments", 1, BlockOutput(nodes=nodes(ids[half:], centers[half:])))
    pairs = set()
    while len(pairs) < n_edges:
        a, b = sorted(rng.choice(n_nodes, 2, replace=False))
        pairs.add((int(ids[a]), int(ids[b])))
    pairs = sorted(pairs)
    scores = rng.random(len(pairs)).astype(np.float32)
    store.commit_block("agglomerate", 0, BlockOutput(edges=edges(pairs, scores)))
    return ids, centers, pairs, scores


def test_read_nodes_and_edges_in_roi_match_oracle(store):
    rng = np.random.default_rng(0)
    ids, centers, pairs, scores = _random_graph(store, rng)
    position = {int(i): c for i, c in zip(ids, centers)}
    for roi in [Roi((10, 0, 10), (20, 30, 20)), Roi((0, 0, 0), (10, 10, 10)), Roi((20, 20, 20), (0, 10, 10)),
                Roi((-100, -100, -100), (1000, 1000, 1000)), Roi((15, 15, 15), (10, 10, 10))]:
        # half-open: a centre on the lower face is inside, one on the upper face is not
        inside = {i for i, c in position.items() if all(o <= x < e for o, x, e in zip(roi.offset, c, roi.end))}
        got = store.read_nodes(roi)
        assert set(got.ids.tolist()) == inside
        assert len(got.ids) == len(inside)
        for i, c in zip(got.ids.tolist(), got.centers):
            np.testing.assert_array_equal(c, position[i])
        expected = {(u, v, float(s)) for (u, v), s in zip(pairs, scores) if u in inside or v in inside}
        assert edge_set(store.read_edges(roi)) == expected
    # the test exercises nodes exactly on ROI faces
    roi = Roi((10, 0, 10), (20, 30, 20))
    assert any(c[0] == roi.offset[0] for c in centers) and any(c[0] == roi.end[0] for c in centers)


def test_rewriting_a_block_replaces_its_rows(store):
    first = BlockOutput(
        nodes=nodes([1, 2, 3], np.zeros((3, 3))),
        edges=edges([[1, 2], [2, 3]], [0.1, 0.2]),
        result=b"first",
    )
    store.commit_block("s", 5, first)
    store.commit_block("s", 6, BlockOutput(nodes=nodes([10], np.zeros((1, 3))), edges=edges([[3, 10]], [0.9])))
    # the same block again, twice, with different content: 1 and edge (1, 2) are gone
    second = BlockOutput(nodes=nodes([2, 3, 4], np.ones((3, 3)), [7, 8, 9]), edges=edges([[2, 3], [3, 4]], [0.5, 0.6]))
    store.commit_block("s", 5, second)
    store.commit_block("s", 5, second)
    got = store.read_nodes()
    assert got.ids.tolist() == [2, 3, 4, 10]
    assert got.sizes.tolist() == [7, 8, 9, 1]
    assert edge_set(store.read_edges()) == {(2, 3, 0.5), (3, 4, 0.6000000238418579), (3, 10, 0.8999999761581421)}
    assert len(store.read_edges()) == 3
    assert store.done_blocks("s") == {5, 6}
    # a rerun that produces no result does not leave the old one behind
    assert store.block_results("s") == {}


def test_drop_stage_removes_only_that_stage(store):
    store.commit_block("fragments", 0, BlockOutput(nodes=nodes([1, 2], np.zeros((2, 3))), result=b"f0"))
    store.commit_block("agglomerate", 0, BlockOutput(edges=edges([[1, 2]], [0.3]), result=b"a0"))
    store.commit_block("agglomerate", 1, BlockOutput(edges=edges([[2, 5]], [0.4])))
    store.commit_block("it's", 0, BlockOutput(nodes=nodes([9], np.zeros((1, 3))), result=b"q"))
    store.set_stage_state("fragments", StageState("fp-f", "tok-f"))
    store.set_stage_state("agglomerate", StageState("fp-a", "tok-a"))
    store.drop_stage("agglomerate")
    assert len(store.read_edges()) == 0
    assert store.done_blocks("agglomerate") == set()
    assert store.block_results("agglomerate") == {}
    assert store.stage_state("agglomerate") is None
    # untouched
    assert store.read_nodes().ids.tolist() == [1, 2, 9]
    assert store.done_blocks("fragments") == {0}
    assert store.block_results("fragments") == {0: b"f0"}
    assert store.stage_state("fragments") == StageState("fp-f", "tok-f")
    assert store.block_results("it's") == {0: b"q"}
    store.drop_stage("it's")
    assert store.read_nodes().ids.tolist() == [1, 2]


def test_iter_edges_chunks_cover_all_edges(store):
    pairs = [[i, i + 1] for i in range(1, 11)]
    store.commit_block("a", 0, BlockOutput(edges=edges(pairs[:4], np.linspace(0, 1, 4))))
    store.commit_block("a", 1, BlockOutput(edges=edges(pairs[4:], np.linspace(0, 1, 6))))
    chunks = list(store.iter_edges(chunk_size=3))
    # chunks are whole blocks gathered up to at least chunk_size edges
    assert [len(c) for c in chunks] == [4, 6]
    assert all(c.u.dtype == np.uint64 and c.scores.dtype == np.float32 for c in chunks)
    assert len(list(store.iter_edges(chunk_size=100))) == 1
    seen = [(int(u), int(v)) for c in chunks for u, v in zip(c.u, c.v)]
    assert sorted(seen) == [tuple(p) for p in pairs]
    assert len(store.read_edges()) == 10


def test_read_graph(store):
    rng = np.random.default_rng(1)
    ids, centers, pairs, scores = _random_graph(store, rng, n_nodes=20, n_edges=30)
    graph = store.read_graph()
    assert set(graph.nodes) == set(ids.tolist())
    assert {tuple(sorted(e)) for e in graph.edges} == set(pairs)
    u, v = pairs[0]
    assert graph.edges[u, v]["merge_score"] == pytest.approx(float(scores[0]))
    i = int(ids[3])
    assert graph.nodes[i]["center"] == tuple(centers[3])
    assert graph.nodes[i]["size"] == 4
    roi = Roi((0, 0, 0), (20, 50, 50))
    sub = store.read_graph(roi)
    inside = {int(i) for i, c in zip(ids, centers) if 0 <= c[0] < 20}
    assert {n for n in sub.nodes if "center" in sub.nodes[n]} == inside
    assert all(a in inside or b in inside for a, b in sub.edges)


def test_stage_state_round_trip(store):
    assert store.stage_state("fragments") is None
    store.set_stage_state("fragments", StageState("abc", "t1"))
    assert store.stage_state("fragments") == StageState("abc", "t1")
    store.set_stage_state("fragments", StageState("def", "t2"))
    assert store.stage_state("fragments") == StageState("def", "t2")
    assert store.stage_state("relabel") is None


def test_block_results_round_trip(store):
    payload = bytes(range(256)) * 3
    store.commit_block("evaluate", 0, BlockOutput(result=payload))
    store.commit_block("evaluate", 4, BlockOutput(result=b""))
    store.commit_block("evaluate", 2, BlockOutput(result=b"x"))
    store.commit_block("evaluate", 2, BlockOutput(result=b"y"))
    assert store.block_results("evaluate") == {0: payload, 4: b"", 2: b"y"}
    assert store.block_results("check") == {}


@pytest.mark.parametrize("backend", BACKENDS)
def test_persistence_across_reopen(tmp_path, backend, request):
    url = url_for(backend, tmp_path, request)
    store = open_store(url)
    store.commit_block("fragments", 2, BlockOutput(nodes=nodes([BIG], [[1, 2, 3]], [5]), result=b"r"))
    store.commit_block("agglomerate", 2, BlockOutput(edges=edges([[BIG, BIG + 1]], [0.5])))
    store.set_stage_state("fragments", StageState("fp", "tok"))
    store.close()
    again = open_store(url)
    try:
        assert isinstance(again, CLASSES[backend])
        assert again.read_nodes().ids.tolist() == [BIG]
        assert again.read_nodes().centers.tolist() == [[1.0, 2.0, 3.0]]
        assert edge_set(again.read_edges()) == {(BIG, BIG + 1, 0.5)}
        assert again.done_blocks("fragments") == {2}
        assert again.block_results("fragments") == {2: b"r"}
        assert again.stage_state("fragments") == StageState("fp", "tok")
    finally:
        again.close()


def test_attributes_round_trip(store):
    n = nodes([5, 3, 9], [[0, 0, 0], [1, 1, 1], [2, 2, 2]])
    n.attrs = {"mean_affinity": np.array([0.5, 0.25, 0.75], np.float32), "label_count": np.array([1, 2, 3])}
    e = edges([[3, 5], [5, 9]], [0.1, 0.2])
    e.attrs = {"score_mean": np.array([0.3, 0.4]), "score_hist_quant_75": np.array([0.5, 0.6])}
    store.commit_block("fragments", 0, BlockOutput(nodes=n))
    store.commit_block("agglomerate", 0, BlockOutput(edges=e))
    got = store.read_nodes()
    assert got.ids.tolist() == [3, 5, 9]
    np.testing.assert_allclose(got.attrs["mean_affinity"], [0.25, 0.5, 0.75])
    np.testing.assert_array_equal(got.attrs["label_count"], [2, 1, 3])
    got_edges = store.read_edges()
    np.testing.assert_allclose(got_edges.attrs["score_mean"], [0.3, 0.4])
    np.testing.assert_allclose(got_edges.attrs["score_hist_quant_75"], [0.5, 0.6])
    bulk = list(store.iter_edges())[0]
    np.testing.assert_allclose(np.sort(bulk.attrs["score_mean"]), [0.3, 0.4])
    graph = store.read_graph()
    assert graph.nodes[9]["mean_affinity"] == pytest.approx(0.75)
    assert graph.edges[3, 5]["score_mean"] == pytest.approx(0.3)


def test_bad_attribute_name_is_refused_before_writing(store):
    from blockseg.graph.base import StoreError

    n = nodes([1], [[0, 0, 0]])
    n.attrs = {"drop table": np.array([1.0])}
    with pytest.raises(StoreError, match="attribute name"):
        store.commit_block("fragments", 0, BlockOutput(nodes=n))
    assert store.done_blocks("fragments") == set()
    assert len(store.read_nodes()) == 0


def test_lut_round_trip_keeps_thresholds_apart(store):
    ids = np.array([30, 10, 20], np.uint64)
    for threshold, segments in ((0.29, [10, 10, 20]), (0.58, [10, 10, 10]), (0.1 + 0.2, [30, 10, 20])):
        store.write_lut(threshold, ids, np.array(segments, np.uint64))
    assert len({store.lut_path(t) for t in (0.29, 0.58, 0.1 + 0.2, 0.3)}) == 4
    lut_ids, lut_segments = store.read_lut(0.29)
    assert lut_ids.tolist() == [10, 20, 30]  # sorted by fragment id
    assert lut_segments.tolist() == [10, 20, 10]
    assert store.read_lut(0.58)[1].tolist() == [10, 10, 10]
    assert store.read_lut(0.1 + 0.2)[1].tolist() == [10, 20, 30]
    low_ids, low_segments = store.read_lut_range(0.29, 15, 31)
    assert low_ids.tolist() == [20, 30] and low_segments.tolist() == [20, 10]
    assert store.lut_thresholds() == sorted([0.29, 0.58, 0.1 + 0.2])
    from blockseg.graph.base import StoreError

    with pytest.raises(StoreError, match="no LUT"):
        store.read_lut(0.3)
    store.drop_luts()
    assert store.lut_thresholds() == []


def test_meta_round_trip(store):
    assert store.read_meta() is None
    store.write_meta({"block_shape": [1, 2, 3]})
    assert store.read_meta() == {"block_shape": [1, 2, 3]}


@pytest.mark.parametrize("url, message", [
    ("postgres://db/graph", "unknown scheme postgres://"),
    ("graph.db", "unknown scheme (none)"),
    ("sqlite://graph.db", "expected sqlite:///path/graph.db"),
])
def test_bad_urls(url, message):
    from blockseg.graph.base import StoreError

    with pytest.raises(StoreError, match=message.replace("(", r"\(").replace(")", r"\)")):
        open_store(url)


@pytest.mark.parametrize("backend", ("sqlite", "files"))
def test_unwritable_location(tmp_path, backend):
    import os

    from blockseg.graph.base import StoreError

    if os.geteuid() == 0:
        # root writes anywhere: use a path below a regular file instead
        blocker = tmp_path / "a_file"
        blocker.write_text("")
        target = blocker / "inside"
    else:
        target = tmp_path / "ro"
        target.mkdir()
        target.chmod(0o500)
    with pytest.raises(StoreError, match="graph store"):
        open_store(url_for(backend, target))


def test_a_commit_under_another_token_writes_nothing(store):
    out = BlockOutput(nodes=nodes([1, 2], np.zeros((2, 3))), edges=edges([[1, 2]], [0.5]), result=b"r")
    store.set_stage_state("agglomerate", StageState("f", "t1"))
    store.commit_block("agglomerate", 0, out, token="t1")
    store.drop_stage("agglomerate")  # reset: no state at all for a while
    with pytest.raises(StaleCommit, match="agglomerate: block 1 .* no results now; not committed"):
        store.commit_block("agglomerate", 1, out, token="t1")
    store.set_stage_state("agglomerate", StageState("f", "t2"))
    with pytest.raises(StaleCommit, match="token is now t2"):
        store.commit_block("agglomerate", 1, out, token="t1")
    assert store.done_blocks("agglomerate") == set()
    assert len(store.read_block_edges("agglomerate", [0, 1])) == 0 and store.block_results("agglomerate") == {}
    store.commit_block("agglomerate", 1, out, token="t2")
    store.commit_block("agglomerate", 2, out)  # without a token, as the driver commits
    assert store.done_blocks("agglomerate") == {1, 2}


def test_read_block_results_reads_only_those_blocks(store):
    store.commit_block("evaluate", 0, BlockOutput(result=b"zero"))
    store.commit_block("evaluate", 1, BlockOutput(edges=edges([[1, 2]], [0.5])))  # no result
    store.commit_block("evaluate", 2, BlockOutput(result=b""))
    store.commit_block("evaluate", 3, BlockOutput(result=b"old"))
    store.commit_block("evaluate", 3, BlockOutput(result=b"new"))  # a rerun replaces
    store.commit_block("other", 0, BlockOutput(result=b"elsewhere"))
    assert store.read_block_results("evaluate", [3, 1, 2, 9]) == {2: b"", 3: b"new"}
    assert store.read_block_results("evaluate", [0]) == {0: b"zero"}
    assert store.read_block_results("evaluate", []) == {}
    assert store.read_block_results("missing", [0, 1]) == {}


def test_read_block_edges_reads_only_those_blocks(store):
    store.commit_block("agglomerate", 0, BlockOutput(edges=edges([[1, 2], [2, 3]], [0.1, 0.2])))
    store.commit_block("agglomerate", 1, BlockOutput(edges=edges([[3, 4]], [0.3])))
    store.commit_block("agglomerate", 2, BlockOutput(edges=edges([[4, 5], [5, 6], [6, 7]], [0.4, 0.5, 0.6])))
    store.commit_block("stitch", 1, BlockOutput(edges=edges([[8, 9]], [0.9])))
    store.commit_block("agglomerate", 1, BlockOutput(edges=edges([[3, 4]], [0.35])))  # a rerun replaces
    assert [b for b in store.edge_block_ids("agglomerate") if b in (0, 1, 2)] == [0, 1, 2]
    got = store.read_block_edges("agglomerate", [2, 1])
    assert got.u.dtype == np.uint64 and got.scores.dtype == np.float32
    assert edge_set(got) == {(3, 4, float(np.float32(0.35))), (4, 5, float(np.float32(0.4))),
                             (5, 6, 0.5), (6, 7, float(np.float32(0.6)))}
    assert edge_set(store.read_block_edges("stitch", [1, 7])) == {(8, 9, float(np.float32(0.9)))}
    assert len(store.read_block_edges("agglomerate", [])) == 0
    assert len(store.read_block_edges("agglomerate", [9])) == 0


def test_read_block_node_ids_reads_only_those_blocks(store):
    store.commit_block("fragments", 0, BlockOutput(nodes=nodes([BIG, 3], np.zeros((2, 3)))))
    store.commit_block("fragments", 1, BlockOutput(nodes=nodes([5], np.zeros((1, 3)))))
    store.commit_block("fragments", 2, BlockOutput(nodes=nodes([7, 8], np.zeros((2, 3)))))
    store.commit_block("fragments", 2, BlockOutput(nodes=nodes([9], np.zeros((1, 3)))))  # a rerun replaces
    got = store.read_block_node_ids("fragments", [0, 2, 6])
    assert got.dtype == np.uint64 and sorted(got.tolist()) == [3, 9, BIG]
    assert len(store.read_block_node_ids("fragments", [])) == 0
    assert len(store.read_block_node_ids("other", [0])) == 0


def test_a_pickled_store_reopens_and_reads(store):
    """What a worker gets when a block function carries the store: the same rows, read there."""
    import pickle

    store.commit_block("agglomerate", 4, BlockOutput(edges=edges([[BIG, BIG + 1]], [0.5]), result=b"r"))
    again = pickle.loads(pickle.dumps(store))
    assert type(again) is type(store) and again.url == store.url
    assert edge_set(again.read_block_edges("agglomerate", [4])) == {(BIG, BIG + 1, 0.5)}
    assert again.done_blocks("agglomerate") == {4}
    assert open_store(store.url).block_results("agglomerate") == {4: b"r"}
    assert store.workers_write == (not isinstance(store, SqliteGraphStore))
