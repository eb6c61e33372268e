"""Tests of workers.channels: BiaPy B/C/D/M/P/Dv2 targets and their blockwise context."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from helpers import voronoi_cells
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from workers.channels import (
    CHANNEL_SETS,
    central_points,
    channel_names,
    channels_context,
    contour_distance,
    contour_distance_v2,
    contour_mask,
    foreground_mask,
    inside_mask,
    instance_channels,
)


def _square() -> np.ndarray:
    labels = np.zeros((7, 7), np.uint16)
    labels[1:6, 1:6] = 5
    return labels


def _two_squares() -> np.ndarray:
    labels = np.zeros((5, 8), np.uint8)
    labels[1:4, 1:4] = 1
    labels[1:4, 4:7] = 2
    return labels


def _ball(radius: int = 3) -> np.ndarray:
    grid = np.indices((2 * radius + 3,) * 3) - (radius + 1)
    return ((grid**2).sum(0) <= radius**2).astype(np.uint32)


def _blockwise(compute, labels: np.ndarray, block: tuple[int, ...], context: tuple[int, ...]) -> np.ndarray:
    """Run `compute` on each block's write ROI grown by `context` voxels (clipped), crop, assemble."""
    out = None
    starts = [range(0, n, b) for n, b in zip(labels.shape, block)]
    for corner in itertools.product(*starts):
        write = tuple(slice(c, min(c + b, n)) for c, b, n in zip(corner, block, labels.shape))
        read = tuple(slice(max(w.start - k, 0), min(w.stop + k, n)) for w, k, n in zip(write, context, labels.shape))
        result = compute(labels[read])
        if out is None:
            out = np.full(result.shape[:-labels.ndim] + labels.shape, np.nan, result.dtype)
        crop = tuple(slice(w.start - r.start, w.stop - r.start) for w, r in zip(write, read))
        out[(Ellipsis,) + write] = result[(Ellipsis,) + crop]
    return out


# -- hand-computed cases ---------------------------------------------------


def test_square_by_hand():
    labels = _square()
    b, c, d = instance_channels(labels, "BCD")
    ring = np.zeros((7, 7), bool)
    ring[1:6, 1:6] = True
    ring[2:5, 2:5] = False
    assert np.array_equal(c, ring)
    assert np.array_equal(b, labels.astype(bool) & ~ring)
    assert np.array_equal(instance_channels(labels, "BCM")[2], labels > 0)
    # D: the 8 voxels next to the ring are 1 away, the centre 2.
    expected = np.zeros((7, 7))
    expected[2:5, 2:5] = 1
    expected[3, 3] = 2
    assert np.array_equal(d, expected)
    assert np.argwhere(central_points(labels)).tolist() == [[3, 3]]


def test_square_dv2_by_hand():
    dv2 = contour_distance_v2(_square(), distance_clip=3)
    assert dv2[3].tolist() == [2, 3, 2, 1, 2, 3, 2]
    # A background corner's nearest contour voxel is the square's corner, sqrt(2) away.
    assert dv2[0, 0] == pytest.approx(3 - math.sqrt(2))
    # Everything lies in [0, clip], the contour on the top.
    assert dv2.min() >= 0 and dv2.max() == 3
    assert np.all(dv2[contour_mask(_square())] == 3)


def test_two_touching_squares_by_hand():
    labels = _two_squares()
    b, c, m = instance_channels(labels, "BCM")
    # Each 3 x 3 square keeps only its centre: both sides of the interface are contour.
    assert np.argwhere(b).tolist() == [[2, 2], [2, 5]]
    assert int(c.sum()) == 16
    assert np.array_equal(b + c, m)
    _, p = instance_channels(labels, "BP")
    assert np.argwhere(p).tolist() == [[2, 2], [2, 5]]


def test_ball_3d_by_hand():
    labels = _ball(3)
    assert int(foreground_mask(labels).sum()) == 123  # lattice points with x^2 + y^2 + z^2 <= 9
    # Reference contour by brute force: ball voxels with a face neighbour outside.
    points = {tuple(p) for p in np.argwhere(labels)}
    faces = [np.eye(3, dtype=int)[k] * s for k in range(3) for s in (1, -1)]
    contour = {p for p in points if any(tuple(np.add(p, f)) not in points for f in faces)}
    assert {tuple(p) for p in np.argwhere(contour_mask(labels))} == contour
    inside = points - contour
    assert {tuple(p) for p in np.argwhere(inside_mask(labels))} == inside
    assert np.argwhere(central_points(labels)).tolist() == [[4, 4, 4]]
    # D by brute force over all contour voxels, in world units.
    spacing = np.array([3.0, 1.0, 2.0])
    d = contour_distance(labels, voxel_size=spacing)
    contour_xyz = np.array(sorted(contour)) * spacing
    for p in inside:
        nearest = np.sqrt((((np.array(p) * spacing) - contour_xyz) ** 2).sum(1)).min()
        assert d[p] == pytest.approx(nearest)
    assert np.all(d[labels == 0] == 0) and np.all(d[contour_mask(labels)] == 0)


def test_thickness_two_on_square():
    labels = _square()
    contour = contour_mask(labels, thickness=2)
    # Two rings (16 + 8 voxels); only the centre is 3 face steps from the background.
    assert int(contour.sum()) == 24
    assert np.argwhere(inside_mask(labels, thickness=2)).tolist() == [[3, 3]]


def test_central_point_of_a_c_shape_stays_on_the_instance():
    labels = np.zeros((7, 7), np.uint8)
    labels[1:6, 1] = labels[1, 1:6] = labels[5, 1:6] = 3  # a C opening to the right
    # Centre of mass (3, 33/13 = 2.54) rounds to (3, 3), which is in the hole; the
    # nearest instance voxel to the exact centre is (3, 1).
    point = np.argwhere(central_points(labels)).tolist()
    assert point == [[3, 1]]
    assert labels[tuple(point[0])] == 3


# -- comparisons with independent implementations --------------------------


def test_contour_matches_skimage_inner_boundaries():
    labels = voronoi_cells((40, 50), n_seeds=25, radius=6, seed=3)
    assert np.array_equal(contour_mask(labels), find_boundaries(labels, connectivity=1, mode="inner"))


def test_d_equals_per_instance_edt():
    labels = voronoi_cells((16, 24, 24), n_seeds=20, radius=5, seed=4)
    spacing = (3.0, 1.0, 2.0)
    d = contour_distance(labels, voxel_size=spacing)
    contour = contour_mask(labels)
    expected = np.zeros(labels.shape)
    for label in np.unique(labels[labels > 0]):
        # Distance to this instance's own contour only.
        own = ndi.distance_transform_edt(~(contour & (labels == label)), sampling=spacing)
        inside = (labels == label) & ~contour
        expected[inside] = own[inside]
    np.testing.assert_allclose(d, expected, rtol=0, atol=1e-12)
    clipped = contour_distance(labels, voxel_size=spacing, distance_clip=2.5)
    np.testing.assert_allclose(clipped, np.minimum(expected, 2.5), rtol=0, atol=1e-12)


def test_dv2_background_is_distance_to_the_objects():
    labels = voronoi_cells((20, 30), n_seeds=8, radius=5, seed=5)
    spacing = (2.0, 1.0)
    dv2 = contour_distance_v2(labels, distance_clip=6.0, voxel_size=spacing)
    to_objects = ndi.distance_transform_edt(labels == 0, sampling=spacing)
    background = labels == 0
    np.testing.assert_allclose(dv2[background], 6.0 - np.minimum(to_objects[background], 6.0), atol=1e-12)
    d = contour_distance(labels, voxel_size=spacing, distance_clip=6.0)
    inside = inside_mask(labels)
    np.testing.assert_allclose(dv2[inside], 6.0 - d[inside], atol=1e-12)


@pytest.mark.parametrize("channel_set", sorted(CHANNEL_SETS))
def test_sets_stack_their_channels_in_name_order(channel_set):
    labels = voronoi_cells((12, 16, 16), n_seeds=10, radius=4, seed=6)
    spacing = (2.0, 1.0, 1.0)
    out = instance_channels(labels, channel_set, contour_thickness=2, voxel_size=spacing, distance_clip=3.0)
    single = {
        "B": inside_mask(labels, 2),
        "C": contour_mask(labels, 2),
        "M": foreground_mask(labels),
        "D": contour_distance(labels, 2, spacing, 3.0),
        "P": central_points(labels, spacing),
        "Dv2": contour_distance_v2(labels, 3.0, 2, spacing),
    }
    names = channel_names(channel_set)
    assert out.dtype == np.float32 and out.shape == (len(names),) + labels.shape
    for channel, name in zip(out, names):
        np.testing.assert_array_equal(channel, single[name].astype(np.float32))


def test_huge_global_ids_behave_like_small_ones():
    labels = voronoi_cells((20, 30), n_seeds=10, radius=5, seed=7).astype(np.uint64)
    huge = np.where(labels > 0, labels + np.uint64(2**60), 0).astype(np.uint64)
    for channel_set in ("BCD", "BP"):
        expected = instance_channels(labels, channel_set, distance_clip=3)
        np.testing.assert_array_equal(instance_channels(huge, channel_set, distance_clip=3), expected)


# -- blockwise = whole -----------------------------------------------------


@pytest.mark.parametrize("thickness", [1, 2])
@pytest.mark.parametrize("channel_set", sorted(CHANNEL_SETS))
def test_blockwise_equals_whole(channel_set, thickness):
    labels = voronoi_cells((24, 30, 36), n_seeds=40, radius=4, seed=8)
    spacing = (2, 1, 1)
    boxes = [box for box in ndi.find_objects(labels) if box is not None]
    extent = [max(box[axis].stop - box[axis].start for box in boxes) * spacing[axis] for axis in range(3)]
    options = dict(contour_thickness=thickness, distance_clip=3.5)
    context = channels_context(channel_set, voxel_size=spacing, max_object_extent=extent, **options)
    context_voxels = tuple(c // s for c, s in zip(context, spacing))

    def compute(part):
        return instance_channels(part, channel_set, voxel_size=spacing, **options)

    whole = compute(labels)
    blocks = _blockwise(compute, labels, (8, 10, 12), context_voxels)
    assert np.abs(blocks - whole).max() <= 1e-6


@pytest.mark.parametrize("channel_set", ["BC", "BP", "BCD", "Dv2"])
def test_blockwise_without_context_differs(channel_set):
    # The blockwise test above can fail: with no context, contours at block
    # faces are lost, distances miss contours and cut objects move their point.
    labels = voronoi_cells((24, 30, 36), n_seeds=40, radius=4, seed=8)

    def compute(part):
        return instance_channels(part, channel_set, distance_clip=3.5)

    blocks = _blockwise(compute, labels, (8, 10, 12), (0, 0, 0))
    assert np.abs(blocks - compute(labels)).max() > 0.5


def test_context_by_hand():
    assert channels_context("BC", voxel_size=(40, 4, 4), contour_thickness=3) == (120, 12, 12)
    assert channels_context("BCM", voxel_size=(1, 1)) == (1, 1)
    # D: thickness + ceil(clip / size) voxels.
    assert channels_context("BCD", voxel_size=(40, 4, 4), distance_clip=100) == (160, 104, 104)
    assert channels_context("Dv2", voxel_size=(10, 10), distance_clip=25, contour_thickness=2) == (50, 50)
    # P: whole objects.
    assert channels_context("BP", voxel_size=(40, 4, 4), max_object_extent=(400, 200, 200)) == (400, 200, 200)
    assert channels_context("BP", voxel_size=(0.5, 0.5), max_object_extent=3) == (3.0, 3.0)


# -- bad inputs --------------------------------------------------------------


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.ones((4, 4), np.float32), "integer dtype"),
        (np.full((4, 4), -1, np.int32), ">= 0"),
        (np.ones(4, np.int32), "2D or 3D"),
        (np.ones((2, 2, 2, 2), np.int32), "2D or 3D"),
    ],
)
def test_bad_labels(labels, message):
    with pytest.raises(ValueError, match=message):
        instance_channels(labels, "BC")


@pytest.mark.parametrize("channel_set", ["BCX", "bc", "", None, "DV2"])
def test_unknown_channel_set(channel_set):
    with pytest.raises(ValueError, match="unknown channel set"):
        instance_channels(_square(), channel_set)
    with pytest.raises(ValueError, match="unknown channel set"):
        channels_context(channel_set, voxel_size=(1, 1))


@pytest.mark.parametrize("thickness", [0, -1, 1.5, True, "2"])
def test_bad_thickness(thickness):
    with pytest.raises(ValueError, match="contour_thickness"):
        instance_channels(_square(), "BC", contour_thickness=thickness)
    with pytest.raises(ValueError, match="contour_thickness"):
        channels_context("BC", voxel_size=(1, 1), contour_thickness=thickness)


def test_missing_or_bad_parameters():
    with pytest.raises(ValueError, match="Dv2 needs distance_clip"):
        instance_channels(_square(), "BDv2")
    with pytest.raises(ValueError, match="distance_clip"):
        instance_channels(_square(), "BCD", distance_clip=-1)
    with pytest.raises(ValueError, match="distance_clip"):
        channels_context("BCD", voxel_size=(1, 1))
    with pytest.raises(ValueError, match="max_object_extent"):
        channels_context("BP", voxel_size=(1, 1))
    with pytest.raises(ValueError, match="voxel_size"):
        instance_channels(_square(), "BCD", voxel_size=(1, 1, 1), distance_clip=2)
    with pytest.raises(ValueError, match="voxel_size"):
        instance_channels(_square(), "BCD", voxel_size=(0, 1), distance_clip=2)
