"""Tests of blockseg.segments: connected-component LUTs and their files."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest

from blockseg.segments import connected_component_luts, lut_name, read_lut, read_lut_range, write_lut


def _oracle(fragment_ids, u, v, scores, threshold) -> dict[int, int]:
    """fragment -> smallest fragment id of its component in the graph of edges with score <= threshold."""
    graph = nx.Graph()
    graph.add_nodes_from(int(i) for i in fragment_ids if i != 0)
    graph.add_nodes_from(int(i) for i in np.concatenate([u, v]))
    graph.add_edges_from((int(a), int(b)) for a, b, s in zip(u, v, scores) if s <= threshold)
    mapping = {}
    for component in nx.connected_components(graph):
        smallest = min(component)
        mapping.update({node: smallest for node in component})
    return mapping


def _random_graph(rng, n_nodes, n_edges, spread):
    ids = np.unique(rng.integers(1, spread, n_nodes, dtype=np.uint64))
    a = rng.integers(0, len(ids), n_edges)
    b = rng.integers(0, len(ids), n_edges)
    keep = a != b
    u = np.minimum(ids[a[keep]], ids[b[keep]])
    v = np.maximum(ids[a[keep]], ids[b[keep]])
    # coarse scores so that some equal a threshold exactly
    scores = rng.integers(0, 10, len(u)) / 10
    return ids, u, v, scores


@pytest.mark.parametrize("seed", range(6))
def test_luts_match_networkx_components(seed):
    rng = np.random.default_rng(seed)
    ids, u, v, scores = _random_graph(rng, n_nodes=80, n_edges=70, spread=2**40)
    # leave a few edge endpoints out of the node list: they must be added
    listed = ids[rng.random(len(ids)) > 0.1]
    thresholds = [0.7, 0.0, 0.3, 1.0, 0.45]  # unsorted on purpose
    results = list(connected_component_luts(listed, u, v, scores, thresholds))
    assert [t for t, _, _ in results] == sorted(thresholds)
    for threshold, fragment_ids, segment_ids in results:
        assert fragment_ids.dtype == np.uint64 and segment_ids.dtype == np.uint64
        assert np.all(np.diff(fragment_ids.astype(np.float64)) > 0) or len(fragment_ids) < 2
        expected = _oracle(listed, u, v, scores, threshold)
        assert set(fragment_ids.tolist()) == set(expected)
        got = dict(zip(fragment_ids.tolist(), segment_ids.tolist()))
        assert got == expected
        assert 0 not in segment_ids
    # more edges at higher thresholds: never more segments
    counts = [len(set(s.tolist())) for _, _, s in results]
    assert counts == sorted(counts, reverse=True)
    assert counts[0] > counts[-1]


def test_score_equal_to_threshold_merges():
    ids = np.array([1, 2, 3], np.uint64)
    u, v = np.array([1, 2], np.uint64), np.array([2, 3], np.uint64)
    scores = np.array([0.29, 0.29000001])
    ((t0, f0, s0), (t1, f1, s1)) = connected_component_luts(ids, u, v, scores, [0.29, 0.5])
    assert t0 == 0.29
    assert s0.tolist() == [1, 1, 3]
    assert s1.tolist() == [1, 1, 1]


def test_isolated_nodes_map_to_themselves_and_zero_is_dropped():
    ids = np.array([0, 40, 10, 30, 20], np.uint64)
    u = np.array([30], np.uint64)
    v = np.array([40], np.uint64)
    ((_, fragments, segments),) = connected_component_luts(ids, u, v, np.array([0.1]), [0.5])
    assert fragments.tolist() == [10, 20, 30, 40]
    assert segments.tolist() == [10, 20, 30, 30]


def test_segment_id_is_smallest_whatever_the_edge_order():
    ids = np.array([5, 9, 2, 7], np.uint64)
    u = np.array([7, 5, 2], np.uint64)
    v = np.array([9, 9, 9], np.uint64)
    scores = np.array([0.1, 0.2, 0.3])
    for permutation in ([0, 1, 2], [2, 1, 0], [1, 2, 0]):
        ((_, f, s),) = connected_component_luts(ids, u[permutation], v[permutation], scores[permutation], [1.0])
        assert f.tolist() == [2, 5, 7, 9]
        assert s.tolist() == [2, 2, 2, 2]


def test_no_edges_and_no_nodes():
    ids = np.array([3, 1], np.uint64)
    empty = np.zeros(0, np.uint64)
    ((_, f, s),) = connected_component_luts(ids, empty, empty, np.zeros(0), [0.5])
    assert f.tolist() == [1, 3] and s.tolist() == [1, 3]
    ((_, f, s),) = connected_component_luts(empty, empty, empty, np.zeros(0), [0.5])
    assert len(f) == 0 and len(s) == 0


# ---------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------


def test_lut_name_keeps_exact_thresholds():
    names = {lut_name(t) for t in (0.29, 0.58, 0.1 + 0.2, 0.3, 0.1)}
    assert len(names) == 5
    assert lut_name(0.29) == "threshold_0.29.npy"
    assert lut_name(0.1 + 0.2) != lut_name(0.3)
    assert lut_name(np.float32(0.5)) == lut_name(0.5)
    assert lut_name(1) == lut_name(1.0)


def test_write_and_read_lut(tmp_path):
    fragments = np.array([3, 8, 2**62 + 1], np.uint64)
    segments = np.array([3, 3, 2**62 + 1], np.uint64)
    path = write_lut(tmp_path / "luts", 0.1 + 0.2, fragments, segments)
    assert path.name == lut_name(0.1 + 0.2)
    assert path.exists()
    assert sorted(p.name for p in (tmp_path / "luts").iterdir()) == [path.name]  # no temporary left over
    got_f, got_s = read_lut(path)
    np.testing.assert_array_equal(got_f, fragments)
    np.testing.assert_array_equal(got_s, segments)
    assert got_f.dtype == np.uint64


def test_read_lut_range_returns_exactly_the_range(tmp_path):
    rng = np.random.default_rng(3)
    ids_per_block = 1000
    fragments = np.unique(rng.integers(1, 10 * ids_per_block, 500).astype(np.uint64))
    fragments = np.concatenate([fragments, np.array([2**62, 2**62 + 5], np.uint64)])
    segments = fragments // np.uint64(7) + np.uint64(1)
    path = write_lut(tmp_path, 0.5, fragments, segments)
    lut = dict(zip(fragments.tolist(), segments.tolist()))
    ranges = [(b * ids_per_block, (b + 1) * ids_per_block) for b in range(11)]
    ranges += [(0, 1), (int(fragments[5]), int(fragments[5]) + 1), (int(fragments[5]), int(fragments[5])),
               (2**62, 2**62 + 5), (2**62, 2**62 + 6)]
    for low, high in ranges:
        got_f, got_s = read_lut_range(path, low, high)
        expected = sorted(f for f in lut if low <= f < high)
        assert got_f.tolist() == expected
        assert got_s.tolist() == [lut[f] for f in expected]


def test_segment_counts_are_one_line():
    from blockseg.tasks.segments import describe_counts

    assert describe_counts({0.1: (120, 40), 0.5: (120, 12), 0.95: (120, 1)}) == (
        "120 fragments -> segments at 0.1: 40, 0.5: 12, 0.95: 1"
    )
    # a store whose fragments differ between thresholds says so per threshold
    assert describe_counts({0.25: (10, 4), 0.75: (9, 2)}) == "fragments -> segments at 0.25: 4 (of 10), 0.75: 2 (of 9)"
