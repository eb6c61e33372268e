"""workers/components.py: the pieces of the distributed connected components, on tiny graphs."""

from __future__ import annotations

import networkx as nx
import numpy as np

from blockseg.segments import connected_component_luts
from workers.components import lookup, merge_pairs, open_mask, threshold_labels


def test_threshold_labels_equal_the_single_process_luts():
    rng = np.random.default_rng(0)
    ids = np.unique(rng.integers(1, 500, 120)).astype(np.uint64)
    u, v = rng.choice(ids, 150), rng.choice(ids, 150)
    keep = u != v
    u, v = np.minimum(u, v)[keep], np.maximum(u, v)[keep]
    scores = rng.random(len(u))
    thresholds = [0.9, 0.1, 0.5]
    got_ids, labels = threshold_labels(u, v, scores, thresholds, extra_ids=ids)
    for row, (_, fragments, segments) in enumerate(connected_component_luts(ids, u, v, scores, thresholds)):
        np.testing.assert_array_equal(got_ids, fragments)
        np.testing.assert_array_equal(labels[row], segments)


def test_merge_pairs_labels_each_component_with_its_smallest_id():
    rng = np.random.default_rng(1)
    vertices = rng.integers(1, 60, 40).astype(np.uint64)
    parents = rng.integers(1, 60, 40).astype(np.uint64)
    ids, labels = merge_pairs(vertices, parents)
    graph = nx.Graph()
    graph.add_edges_from(zip(vertices.tolist(), parents.tolist()))
    expected = {n: min(c) for c in nx.connected_components(graph) for n in c}
    assert ids.tolist() == sorted(expected)
    assert labels.tolist() == [expected[n] for n in ids.tolist()]


def test_open_mask_is_the_reach_around_the_range():
    ids = np.array([b * 10 + 1 for b in range(10)], np.uint64)  # one fragment homed in each block 0..9
    assert open_mask(ids, 10, 2, 8, 2).tolist() == [True] * 4 + [False] * 2 + [True] * 4
    assert not open_mask(ids, 10, -(1 << 62), 1 << 62, 3).any()


def test_lookup_keeps_unknown_ids():
    keys = np.array([3, 8], np.uint64)
    assert lookup(keys, np.array([1, 2], np.uint64), np.array([8, 4, 3], np.uint64)).tolist() == [2, 4, 1]
    assert lookup(keys[:0], keys[:0], np.array([5], np.uint64)).tolist() == [5]
