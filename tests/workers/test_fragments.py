"""Tests of workers.fragments: seeded watershed, per-section mode, filters, global ids, nodes."""

from __future__ import annotations

import numpy as np
import pytest

from workers.fragments import (
    drop_weak_fragments,
    fragment_nodes,
    make_ids_global,
    mean_affinity,
    watershed_from_affinities,
)


def two_boxes(shape=(6, 12, 20), wall=(9, 11), left=1.0, right=1.0) -> np.ndarray:
    """Affinities of two boxes side by side in x, split by a wall of zero affinity in every channel."""
    affs = np.empty((3,) + shape, np.float32)
    affs[..., : wall[0]] = left
    affs[..., wall[1] :] = right
    affs[..., wall[0] : wall[1]] = 0
    return affs


def boundary_line(axis: int, length: int = 41, marks=(0, 10, 30, 40)) -> np.ndarray:
    """A one-voxel-thin line along ``axis`` with boundary voxels at ``marks``.

    The distance to the boundary peaks at 5 (value 5 voxels), 20 (10 voxels)
    and 35 (5 voxels). The small peaks survive as seeds only while the seed
    window reaches no voxel of the big peak's slope above 5 voxels, that is
    while the window radius (in voxels) is at most 10.
    """
    shape = [1, 1, 1]
    shape[axis] = length
    affs = np.ones((3,) + tuple(shape), np.float32)
    for mark in marks:
        index = [slice(None)] * 4
        index[axis + 1] = mark
        affs[tuple(index)] = 0
    return affs


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label arrays split the voxels the same way (up to renaming)."""
    pairs = set(zip(a.ravel().tolist(), b.ravel().tolist()))
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


# ---------------------------------------------------------------------------
# watershed
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("thickness", [2, 3])
def test_wall_separates_fragments(thickness):
    affs = two_boxes(wall=(9, 9 + thickness))
    fragments = watershed_from_affinities(affs, voxel_size=(40, 10, 10), min_seed_distance=50)
    assert fragments.dtype == np.uint64
    assert fragments.shape == affs.shape[1:]
    left = set(np.unique(fragments[..., :9]).tolist())
    right = set(np.unique(fragments[..., 9 + thickness :]).tolist())
    assert 0 not in left and 0 not in right
    assert left.isdisjoint(right)


def test_uint8_affinities_are_scaled():
    affs = (two_boxes() * 255).astype(np.uint8)
    np.testing.assert_allclose(mean_affinity(affs), mean_affinity(two_boxes()))
    as_uint8 = watershed_from_affinities(affs, (40, 10, 10), min_seed_distance=50)
    as_float = watershed_from_affinities(two_boxes(), (40, 10, 10), min_seed_distance=50)
    np.testing.assert_array_equal(as_uint8, as_float)


def test_all_boundary_gives_background():
    affs = np.zeros((3, 4, 5, 6), np.float32)
    fragments = watershed_from_affinities(affs, (10, 10, 10))
    assert fragments.shape == (4, 5, 6)
    assert not fragments.any()


def _expected_seeds(min_seed_distance: float, voxel: float) -> int:
    radius = int(min_seed_distance / (2 * voxel))
    return 3 if radius <= 10 else 1


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("voxel, distance", [(10, 100), (10, 300), (4, 80), (4, 88), (40, 400), (40, 880)])
def test_seed_spacing_is_in_nm(axis, voxel, distance):
    voxel_size = [7, 7, 7]
    voxel_size[axis] = voxel
    fragments = watershed_from_affinities(boundary_line(axis), tuple(voxel_size), min_seed_distance=distance)
    assert len(np.unique(fragments[fragments > 0])) == _expected_seeds(distance, voxel)


def test_anisotropic_voxels_space_seeds_per_axis():
    # the same pattern of voxels along z (40 nm) and along x (4 nm): along z the
    # small peaks are 600 nm from the big one, along x only 60 nm
    voxel_size = (40, 4, 4)
    along_z = watershed_from_affinities(boundary_line(0), voxel_size, min_seed_distance=400)
    along_x = watershed_from_affinities(boundary_line(2), voxel_size, min_seed_distance=400)
    assert len(np.unique(along_z)) == 3
    assert len(np.unique(along_x)) == 1


def test_fewer_fragments_as_min_seed_distance_grows():
    rng = np.random.default_rng(0)
    affs = np.ones((3, 8, 24, 24), np.float32)
    affs[:, rng.random((8, 24, 24)) < 0.08] = 0
    counts = [
        len(np.unique(watershed_from_affinities(affs, (20, 10, 10), min_seed_distance=d)))
        for d in (10, 40, 80, 200)
    ]
    assert counts[0] > counts[1] > counts[-1] >= 1


# ---------------------------------------------------------------------------
# per-section mode
# ---------------------------------------------------------------------------


def _sections_affinities() -> np.ndarray:
    rng = np.random.default_rng(1)
    affs = np.ones((3, 5, 16, 16), np.float32)
    for z in range(5):
        affs[:, z, 3 + 2 * z, :] = 0  # a horizontal wall that moves with z
        affs[:, z, rng.random((16, 16)) < 0.05] = 0
    return affs


def test_fragments_in_xy_never_span_sections_and_ids_are_unique():
    affs = _sections_affinities()
    voxel_size = (40, 10, 10)
    fragments = watershed_from_affinities(affs, voxel_size, min_seed_distance=40, fragments_in_xy=True)
    seen: dict[int, int] = {}
    previous_max = 0
    for z in range(fragments.shape[0]):
        ids = np.unique(fragments[z])
        ids = ids[ids > 0]
        assert len(ids) >= 2
        for i in ids.tolist():
            assert i not in seen, f"fragment {i} in sections {seen.get(i)} and {z}"
            seen[i] = z
        # ids of later sections come after those of earlier ones
        assert ids.min() > previous_max
        previous_max = int(ids.max())
        # each section is the same watershed as a one-section volume on its own
        alone = watershed_from_affinities(affs[:, z : z + 1], voxel_size, min_seed_distance=40)
        assert same_partition(fragments[z], alone[0])
    # the same input in 3D does join sections (so the test above can fail)
    in_3d = watershed_from_affinities(affs, voxel_size, min_seed_distance=40)
    assert any(set(np.unique(in_3d[z]).tolist()) & set(np.unique(in_3d[z + 1]).tolist()) for z in range(4))


def test_fragments_in_xy_with_an_empty_section():
    affs = np.ones((3, 3, 8, 8), np.float32)
    affs[:, 1] = 0
    fragments = watershed_from_affinities(affs, (40, 10, 10), min_seed_distance=40, fragments_in_xy=True)
    assert not fragments[1].any()
    first, last = set(np.unique(fragments[0]).tolist()), set(np.unique(fragments[2]).tolist())
    assert 0 not in first and 0 not in last
    assert first.isdisjoint(last)


# ---------------------------------------------------------------------------
# weak fragments
# ---------------------------------------------------------------------------


def test_min_mean_affinity_drops_weak_fragments():
    affs = two_boxes(left=0.9, right=0.6)
    kept = watershed_from_affinities(affs, (40, 10, 10), min_seed_distance=50)
    assert kept[..., 11:].all() and kept[..., :9].all()
    filtered = watershed_from_affinities(affs, (40, 10, 10), min_seed_distance=50, min_mean_affinity=0.7)
    assert not filtered[..., 11:].any()  # mean affinity about 0.6: dropped
    assert filtered[..., :9].all()  # mean affinity above 0.7: kept
    np.testing.assert_array_equal(filtered[..., :9], kept[..., :9])


def test_drop_weak_fragments_against_hand_means():
    fragments = np.array([[0, 1, 1, 2], [2, 3, 3, 0]], np.uint64)
    means = np.array([[0.0, 0.9, 0.5, 0.3], [0.5, 0.7, 0.7, 0.0]], np.float32)
    # fragment 1: 0.7, fragment 2: 0.4, fragment 3: 0.7
    out = drop_weak_fragments(fragments, means, 0.6)
    assert out.tolist() == [[0, 1, 1, 0], [0, 3, 3, 0]]
    assert drop_weak_fragments(fragments, means, 0.71).tolist() == [[0, 0, 0, 0], [0, 0, 0, 0]]
    assert fragments[0, 3] == 2  # input untouched


# ---------------------------------------------------------------------------
# global ids
# ---------------------------------------------------------------------------


def test_make_ids_global_renumbers_consecutively_with_offset():
    fragments = np.array([[0, 7, 7], [3, 0, 42], [3, 3, 2**40]], np.uint64)
    out = make_ids_global(fragments, block_id=5, ids_per_block=10)
    assert out.dtype == np.uint64
    # 1..n in order of first appearance, plus 5 * 10; 0 stays 0
    assert out.tolist() == [[0, 51, 51], [52, 0, 53], [52, 52, 54]]
    assert set((out[out > 0] // 10).tolist()) == {5}  # home block is id // ids_per_block
    assert same_partition(out, fragments)


def test_make_ids_global_with_large_block_ids():
    fragments = np.arange(24, dtype=np.uint64).reshape(2, 3, 4)[:, ::-1]  # not contiguous
    ids_per_block = 2**32
    out = make_ids_global(fragments, block_id=2**20, ids_per_block=ids_per_block)
    nonzero = out[out > 0]
    assert sorted(nonzero.tolist()) == [2**52 + i for i in range(1, 24)]
    assert set((nonzero // np.uint64(ids_per_block)).tolist()) == {2**20}
    assert out[fragments == 0].tolist() == [0]


def test_make_ids_global_raises_when_too_many_fragments():
    fragments = np.array([0, 1, 2, 3], np.uint64)
    assert make_ids_global(fragments, 1, 4).tolist() == [0, 5, 6, 7]
    with pytest.raises(ValueError, match="ids_per_block"):
        make_ids_global(fragments, 1, 3)  # id 3 + 3 would belong to block 2


def test_make_ids_global_all_background():
    out = make_ids_global(np.zeros((2, 2), np.uint64), 9, 100)
    assert out.tolist() == [[0, 0], [0, 0]]


# ---------------------------------------------------------------------------
# nodes
# ---------------------------------------------------------------------------


def test_fragment_nodes_centres_in_world_units():
    fragments = np.zeros((2, 2, 3), np.uint64)
    fragments[0, 0, 0] = fragments[0, 0, 1] = 9
    fragments[1, 1, 2] = 5
    fragments[1, 0, 0] = fragments[1, 1, 0] = fragments[0, 1, 0] = 7
    voxel_size, offset = (40, 4, 5), (100, 20, 30)
    ids, centers, sizes = fragment_nodes(fragments, voxel_size, offset)
    assert ids.dtype == np.uint64 and sizes.dtype == np.int64
    assert ids.tolist() == [5, 7, 9]
    assert sizes.tolist() == [1, 3, 2]
    # centre = offset + (mean voxel index + 0.5) * voxel size
    expected = {
        5: (100 + 1.5 * 40, 20 + 1.5 * 4, 30 + 2.5 * 5),
        7: (100 + (2 / 3 + 0.5) * 40, 20 + (2 / 3 + 0.5) * 4, 30 + 0.5 * 5),
        9: (100 + 0.5 * 40, 20 + 0.5 * 4, 30 + 1.0 * 5),
    }
    for i, center in zip(ids.tolist(), centers):
        np.testing.assert_allclose(center, expected[i])


def test_fragment_nodes_of_background_only():
    ids, centers, sizes = fragment_nodes(np.zeros((2, 2, 2), np.uint64), (1, 1, 1), (0, 0, 0))
    assert len(ids) == 0 and centers.shape == (0, 3) and len(sizes) == 0
