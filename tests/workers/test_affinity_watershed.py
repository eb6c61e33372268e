"""Tests of workers.affinity_watershed: the flood over the affinity edges, its seeds, and the method built on them.

The oracle for the flood is the property that defines a watershed over edge
weights rooted at seeds (a minimum spanning forest): every voxel belongs to
a seed whose minimax path (the highest edge on the best path) to it is the
lowest of all seeds'. It is computed here by a plain Dijkstra per seed.
"""

from __future__ import annotations

import heapq

import numpy as np
import pytest

from workers.affinity_watershed import affinity_seeds, edge_boundary, edge_levels, edge_watershed
from workers.fragments import make_fragments


def _minimax_distances(levels: np.ndarray, markers: np.ndarray) -> dict[int, np.ndarray]:
    """Per seed label: the lowest possible highest edge level on a path from its seed voxels to each voxel."""
    shape = markers.shape
    ndim = markers.ndim
    distances = {}
    for label in np.unique(markers[markers > 0]):
        distance = np.full(shape, np.inf)
        heap = []
        for voxel in zip(*np.nonzero(markers == label)):
            distance[voxel] = -1
            heap.append((-1, voxel))
        heapq.heapify(heap)
        while heap:
            reached, voxel = heapq.heappop(heap)
            if reached > distance[voxel]:
                continue
            for axis in range(ndim):
                for step in (-1, 1):
                    other = list(voxel)
                    other[axis] += step
                    if not 0 <= other[axis] < shape[axis]:
                        continue
                    other = tuple(other)
                    # channel `axis` at p is the edge (p - e_axis, p)
                    level = levels[(axis,) + (voxel if step == -1 else other)]
                    candidate = max(reached, level)
                    if candidate < distance[other]:
                        distance[other] = candidate
                        heapq.heappush(heap, (candidate, other))
        distances[int(label)] = distance
    return distances


@pytest.mark.parametrize("ndim", [2, 3])
def test_every_voxel_joins_a_seed_it_reaches_over_the_lowest_highest_edge(ndim):
    rng = np.random.default_rng(7)
    for _ in range(60):
        shape = tuple(int(s) for s in rng.integers(2, 7, size=ndim))
        levels = rng.integers(0, 256, size=(ndim,) + shape).astype(np.uint8)
        markers = np.zeros(shape, np.int64)
        count = int(rng.integers(1, 5))
        markers.ravel()[rng.choice(markers.size, count, replace=False)] = np.arange(1, count + 1)
        labels = edge_watershed(levels, markers)
        distances = _minimax_distances(levels, markers)
        best = np.min(np.stack(list(distances.values())), axis=0)
        assert labels.min() >= 1  # one connected grid: every voxel reached
        mine = np.choose(labels - 1, [distances[label] for label in sorted(distances)])
        np.testing.assert_array_equal(mine, best)
        np.testing.assert_array_equal(labels[markers > 0], markers[markers > 0])


def test_a_one_edge_boundary_is_where_the_basins_meet():
    # two cells side by side in x; the only low affinity is the x edge
    # between x = 5 and x = 6, as sharp serial-section affinities are
    affs = np.ones((3, 4, 6, 12), np.float32)
    affs[2, :, :, 6] = 0.0
    markers = np.zeros((4, 6, 12), np.int64)
    markers[2, 3, 1], markers[2, 3, 10] = 1, 2
    labels = edge_watershed(edge_levels(affs), markers)
    assert (labels[..., :6] == 1).all() and (labels[..., 6:] == 2).all()


def test_the_border_follows_the_edges_where_a_voxel_map_puts_it_one_off():
    # the same cells through the pipeline's methods: the boundary
    # watershed's voxel map (one minus the mean of a voxel's own channels)
    # sees the low edge only at x = 6 and floods x = 6 from the left
    affs = np.ones((3, 8, 16, 16), np.float32)
    affs[2, :, :, 8] = 0.0
    truth_left = np.zeros((8, 16, 16), bool)
    truth_left[..., :8] = True
    common = dict(min_seed_distance=30, smooth_sigma=0.0)
    ours = make_fragments("affinity_watershed", affs, 1 - affs.mean(0), (10, 10, 10), **common)
    assert len(np.unique(ours[truth_left])) == 1 and len(np.unique(ours[~truth_left])) == 1
    assert ours[0, 0, 0] != ours[0, 0, 15]
    voxel = make_fragments("boundary_watershed", None, 1 - affs.mean(0), (10, 10, 10), **common)
    straddling = set(np.unique(voxel[truth_left])) & set(np.unique(voxel[~truth_left]))
    assert straddling  # the voxel flood's border is one voxel off: a fragment holds voxels of both cells


def test_the_mask_stops_the_flood_and_stays_zero():
    affs = np.ones((3, 4, 8, 8), np.float32)
    mask = np.ones((4, 8, 8), bool)
    mask[:, :, 4] = False  # a wall of masked voxels
    markers = np.zeros((4, 8, 8), np.int64)
    markers[0, 0, 0] = 1
    labels = edge_watershed(edge_levels(affs), markers, mask=mask)
    assert (labels[:, :, 4] == 0).all() and (labels[:, :, 5:] == 0).all() and (labels[:, :, :4] == 1).all()


def test_edge_levels_read_uint8_as_affinity_times_255():
    values = np.array([0.0, 0.2, 0.6, 1.0], np.float32)  # 0, 51, 153, 255 as uint8
    np.testing.assert_array_equal(edge_levels(values), edge_levels(np.rint(values * 255).astype(np.uint8)))
    assert edge_levels(values).tolist() == [255, 163, 41, 0]  # (1 - a)^2 * 255: ordered as 1 - a


def test_edge_boundary_is_high_on_both_sides_of_a_low_edge():
    affs = np.ones((3, 1, 1, 6), np.float32)
    affs[2, 0, 0, 3] = 0.0  # the edge between x = 2 and x = 3
    boundary = edge_boundary(edge_levels(affs))[0, 0]
    assert boundary[2] == boundary[3] > 0
    assert boundary[0] == boundary[1] == boundary[4] == boundary[5] == 0


def test_seed_voxels_join_only_over_high_affinity_edges():
    levels_map = np.zeros((3, 4, 8), np.uint8)  # every voxel is a minimum
    affs = np.ones((3, 3, 4, 8), np.float32)
    affs[0, 1] = 0.0  # sections 0 and 1 do not join
    affs[2, :, :, 4] = 0.2  # a boundary across x in every section
    seeds = affinity_seeds(levels_map, (1, 3, 3), edge_levels(affs))
    assert len(np.unique(seeds)) == 2 * 2  # section 0 alone, sections 1-2 together; two cells each
    assert seeds[1, 0, 0] == seeds[2, 3, 3] != seeds[0, 0, 0]
    assert seeds[1, 0, 0] != seeds[1, 0, 7]


def test_per_section_seeds_give_every_section_its_cells_when_z_affinities_are_zero():
    # ISBI-like: per-section instances, z affinities 0 everywhere. A cell
    # that is not the lowest of a 3-section box would get no seed and be
    # flooded from its neighbour; a window of one section seeds every section.
    rng = np.random.default_rng(3)
    labels = np.zeros((4, 20, 20), np.int64)
    labels[:, :, :10], labels[:, :, 10:] = 1, 2
    labels += 2 * np.arange(4)[:, None, None]  # new ids in every section
    affs = np.ones((3, 4, 20, 20), np.float32)
    affs[0] = 0.0
    affs[2, :, :, 10] = 0.0
    affs[1:] -= 0.1 * rng.random((2, 4, 20, 20), dtype=np.float32)
    fragments = make_fragments(
        "affinity_watershed", affs, 1 - affs.mean(0), (50, 4, 4), min_seed_distance=[0, 40, 40], smooth_sigma=2
    )
    # no fragment holds two instances
    pairs = np.unique(np.stack([fragments.ravel(), labels.ravel()]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1]


def test_the_method_is_deterministic_and_per_section_ids_stay_unique():
    rng = np.random.default_rng(0)
    affs = rng.random((3, 6, 24, 24), dtype=np.float32)
    first = make_fragments("affinity_watershed", affs, 1 - affs.mean(0), (40, 8, 8), min_seed_distance=40)
    again = make_fragments("affinity_watershed", affs, 1 - affs.mean(0), (40, 8, 8), min_seed_distance=40)
    np.testing.assert_array_equal(first, again)
    per_section = make_fragments(
        "affinity_watershed", affs, 1 - affs.mean(0), (40, 8, 8), min_seed_distance=40, fragments_in_xy=True
    )
    for z in range(1, 6):
        assert not set(np.unique(per_section[z])) & set(np.unique(per_section[z - 1]))


def test_levels_that_do_not_fit_the_markers_are_refused():
    with pytest.raises(ValueError, match="does not fit"):
        edge_watershed(np.zeros((2, 4, 4, 4), np.uint8), np.zeros((4, 4, 4), np.int64))
    with pytest.raises(ValueError, match="uint8"):
        edge_watershed(np.zeros((3, 4, 4, 4), np.float32), np.zeros((4, 4, 4), np.int64))
