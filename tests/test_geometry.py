"""Tests of blockseg.geometry: Roi arithmetic, snapping and voxel conversion."""

from __future__ import annotations

import math

import numpy as np
import pytest

from blockseg.geometry import Roi, coordinate


# ---------------------------------------------------------------------------
# construction
# ---------------------------------------------------------------------------


def test_roi_stores_integer_tuples_and_end():
    roi = Roi([10, -20, 30.0], np.array([5, 6, 7]))
    assert roi.offset == (10, -20, 30)
    assert roi.shape == (5, 6, 7)
    assert all(type(v) is int for v in roi.offset + roi.shape)
    assert roi.end == (15, -14, 37)
    assert roi.dims == 3
    assert not roi.empty
    assert Roi((0, 0), (3, 0)).empty


def test_negative_shape_raises():
    with pytest.raises(ValueError, match="negative"):
        Roi((0, 0, 0), (1, -1, 1))


@pytest.mark.parametrize("offset, shape", [((0.5, 0, 0), (1, 1, 1)), ((0, 0, 0), (1, 2.25, 1))])
def test_non_integral_coordinates_raise(offset, shape):
    with pytest.raises(ValueError, match="whole numbers"):
        Roi(offset, shape)


def test_coordinate_accepts_integral_floats_only():
    assert coordinate([1.0, 2, np.int64(3)]) == (1, 2, 3)
    with pytest.raises(ValueError):
        coordinate([1, 1.0000001])


def test_dimension_mismatch_raises():
    with pytest.raises(ValueError, match="dimensions"):
        Roi((0, 0), (1, 1, 1))


# ---------------------------------------------------------------------------
# grow / intersect / contains
# ---------------------------------------------------------------------------


def test_grow_symmetric_and_asymmetric():
    roi = Roi((0, 10, 20), (10, 20, 30))
    grown = roi.grow((1, 2, 3))
    assert grown.offset == (-1, 8, 17)
    assert grown.shape == (12, 24, 36)
    lopsided = roi.grow((1, 0, 0), (0, 5, 0))
    assert lopsided.offset == (-1, 10, 20)
    assert lopsided.end == (10, 35, 50)
    # growing by negative amounts shrinks; too much is an error, not a negative ROI
    assert roi.grow((-2, -2, -2)).shape == (6, 16, 26)
    with pytest.raises(ValueError):
        roi.grow((-6, 0, 0))


def test_intersect_matches_voxel_oracle():
    rng = np.random.default_rng(0)
    for _ in range(50):
        a = Roi(rng.integers(-5, 5, 2), rng.integers(0, 8, 2))
        b = Roi(rng.integers(-5, 5, 2), rng.integers(0, 8, 2))
        # oracle: the set of unit cells covered by both
        cells_a = {(i, j) for i in range(a.offset[0], a.end[0]) for j in range(a.offset[1], a.end[1])}
        cells_b = {(i, j) for i in range(b.offset[0], b.end[0]) for j in range(b.offset[1], b.end[1])}
        both = cells_a & cells_b
        c = a.intersect(b)
        assert c == b.intersect(a) or (c.empty and b.intersect(a).empty)
        cells_c = {(i, j) for i in range(c.offset[0], c.end[0]) for j in range(c.offset[1], c.end[1])}
        assert cells_c == both
        assert c.empty == (not both)


def test_intersect_disjoint_is_empty_not_negative():
    c = Roi((0, 0), (5, 5)).intersect(Roi((10, 1), (3, 3)))
    assert c.empty
    assert all(s >= 0 for s in c.shape)


def test_contains_and_contains_point_are_half_open():
    outer = Roi((0, 0, 0), (10, 10, 10))
    assert outer.contains(outer)
    assert outer.contains(Roi((2, 3, 4), (8, 7, 6)))
    assert not outer.contains(Roi((2, 3, 4), (8, 7, 7)))
    assert not outer.contains(Roi((-1, 0, 0), (2, 2, 2)))
    assert outer.contains_point((0, 0, 0))
    assert outer.contains_point((9.99, 0, 5))
    assert not outer.contains_point((10, 0, 0))
    assert not outer.contains_point((0, -0.01, 0))


# ---------------------------------------------------------------------------
# snapping
# ---------------------------------------------------------------------------


def test_snap_hand_computed():
    roi = Roi((-7, 3), (20, 14))  # end (13, 17)
    assert roi.snap((5, 4), "grow") == Roi((-10, 0), (25, 20))
    assert roi.snap((5, 4), "shrink") == Roi((-5, 4), (15, 12))
    # closest: -7/5 = -1.4 -> -5, 3/4 = 0.75 -> 4; 13/5 = 2.6 -> 15, 17/4 = 4.25 -> 16
    assert roi.snap((5, 4), "closest") == Roi((-5, 4), (20, 12))
    assert roi.snap((5, 4)) == roi.snap((5, 4), "grow")


def test_snap_random_against_floor_ceil_oracle():
    rng = np.random.default_rng(1)
    for _ in range(200):
        offset = rng.integers(-100, 100, 3)
        shape = rng.integers(0, 60, 3)
        voxel = rng.integers(1, 13, 3)
        roi = Roi(offset, shape)
        grown = roi.snap(voxel, "grow")
        shrunk = roi.snap(voxel, "shrink")
        for d in range(3):
            o, e, v = int(offset[d]), int(offset[d] + shape[d]), int(voxel[d])
            assert grown.offset[d] == math.floor(o / v) * v
            assert grown.end[d] == math.ceil(e / v) * v
            lo, hi = math.ceil(o / v) * v, math.floor(e / v) * v
            assert shrunk.offset[d] == lo
            assert shrunk.end[d] == max(lo, hi)
        assert grown.is_aligned(voxel) and shrunk.is_aligned(voxel)
        assert grown.contains(roi)
        assert roi.contains(shrunk) or shrunk.empty


def test_snap_shrink_smaller_than_a_voxel_is_empty():
    snapped = Roi((1,), (3,)).snap((10,), "shrink")
    assert snapped.empty
    assert snapped.shape == (0,)


def test_snap_unknown_mode_raises():
    with pytest.raises(ValueError, match="snap mode"):
        Roi((0,), (1,)).snap((1,), "outwards")


# ---------------------------------------------------------------------------
# voxels
# ---------------------------------------------------------------------------


def test_to_voxels_and_alignment():
    roi = Roi((40, 20, -30), (80, 30, 60))
    assert roi.is_aligned((20, 10, 10))
    assert roi.to_voxels((20, 10, 10)) == ((2, 2, -3), (4, 3, 6))
    assert not roi.is_aligned((20, 20, 10))  # y shape 30 is not whole 20 nm voxels
    with pytest.raises(ValueError, match="not aligned"):
        Roi((5, 0, 0), (20, 10, 10)).to_voxels((20, 10, 10))
    with pytest.raises(ValueError, match="not aligned"):
        Roi((0, 0, 0), (30, 10, 10)).to_voxels((20, 10, 10))


def test_slices_index_the_right_voxels():
    voxel = (20, 10)
    origin = (20, -10)
    data = np.arange(6 * 8).reshape(6, 8)
    roi = Roi((60, 10), (40, 30))
    slices = roi.slices(voxel, origin)
    assert slices == (slice(2, 4), slice(2, 5))
    # oracle: voxel (i, j) of data sits at world origin + (i, j) * voxel
    expected = np.array(
        [
            [data[i, j] for j in range(8) if roi.offset[1] <= origin[1] + j * voxel[1] < roi.end[1]]
            for i in range(6)
            if roi.offset[0] <= origin[0] + i * voxel[0] < roi.end[0]
        ]
    )
    np.testing.assert_array_equal(data[slices], expected)
    with pytest.raises(ValueError):
        Roi((65, 10), (40, 30)).slices(voxel, origin)
