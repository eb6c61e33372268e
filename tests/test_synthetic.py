"""Tests of the synthetic EM-like volume generator."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import label as connected_components
from skimage.segmentation import find_boundaries

from blockseg import synthetic

SMALL_SHAPE = (24, 64, 64)
VOXEL_SIZE = (20, 10, 10)


@pytest.fixture(scope="module")
def demo() -> dict:
    """The default demo volume, built once because it is the slowest call."""
    return synthetic.make_demo_volume()


@pytest.fixture(scope="module")
def small_labels() -> np.ndarray:
    """Labels of a small volume for the cheaper checks."""
    return synthetic.make_labels(SMALL_SHAPE, VOXEL_SIZE, seed=3)


def _assert_contiguous_consecutive(labels: np.ndarray) -> None:
    """Each id 1..N must exist and be exactly one 6-connected component."""
    ids = np.unique(labels)
    np.testing.assert_array_equal(ids, np.arange(1, ids.size + 1))
    # Components of equal-valued voxels: one per id iff every id is connected.
    n_components = connected_components(labels, background=0, connectivity=1).max()
    assert n_components == ids.size


# --------------------------------------------------------------------------
# labels
# --------------------------------------------------------------------------


def test_labels_dtype_shape_and_no_background(small_labels: np.ndarray) -> None:
    assert small_labels.dtype == np.uint64
    assert small_labels.shape == SMALL_SHAPE
    assert small_labels.min() >= 1


def test_labels_are_deterministic_per_seed(small_labels: np.ndarray) -> None:
    again = synthetic.make_labels(SMALL_SHAPE, VOXEL_SIZE, seed=3)
    other = synthetic.make_labels(SMALL_SHAPE, VOXEL_SIZE, seed=4)
    np.testing.assert_array_equal(small_labels, again)
    assert not np.array_equal(small_labels, other)


def test_labels_are_contiguous_and_consecutive(small_labels: np.ndarray) -> None:
    _assert_contiguous_consecutive(small_labels)


def test_labels_contiguous_per_id_with_scipy(demo: dict) -> None:
    # Independent check with another implementation on a sample of ids.
    labels = demo["labels"]
    objects = ndimage.find_objects(labels.astype(np.int64))
    rng = np.random.default_rng(0)
    sample = rng.choice(int(labels.max()), size=25, replace=False) + 1
    for object_id in sample:
        box = objects[object_id - 1]
        _, n = ndimage.label(labels[box] == object_id)
        assert n == 1, f"id {object_id} has {n} components"


def test_demo_labels_object_count_and_size(demo: dict) -> None:
    labels = demo["labels"]
    _assert_contiguous_consecutive(labels)
    n_objects = int(labels.max())
    assert 100 <= n_objects <= 400
    # Median in-plane equivalent diameter, in voxels, of a middle section.
    _, areas = np.unique(labels[labels.shape[0] // 2], return_counts=True)
    diameter = np.median(2.0 * np.sqrt(areas / np.pi))
    assert 15 <= diameter <= 45


def test_labels_respect_anisotropic_voxel_size() -> None:
    # Isotropic objects in world units, sampled 4x coarser along z, must
    # cross boundaries about 4x as often per step along z as along y.
    labels = synthetic.make_labels(
        (32, 96, 96), (40, 10, 10), seed=1, mean_object_size_nm=200.0, elongation=1.0
    )
    along_z = np.mean(labels[1:] != labels[:-1])
    along_y = np.mean(labels[:, 1:] != labels[:, :-1])
    assert 2.5 < along_z / along_y < 6.0


def test_make_contiguous_splits_and_absorbs_fragments() -> None:
    labels = np.ones((1, 6, 6), dtype=np.int64)
    labels[:, :, 3:] = 2
    labels[0, 0, 5] = 1  # detached one-voxel fragment of id 1 inside id 2
    result = synthetic._make_contiguous(labels, min_size=2)
    _assert_contiguous_consecutive(result)
    assert result.max() == 2
    # The fragment is absorbed by the object surrounding it.
    assert result[0, 0, 5] == result[0, 0, 4]


# --------------------------------------------------------------------------
# affinities
# --------------------------------------------------------------------------


def test_affinities_match_hand_computed_values() -> None:
    labels = np.array(
        [
            [[1, 1, 2], [1, 0, 2]],
            [[1, 3, 2], [0, 0, 2]],
        ],
        dtype=np.uint32,
    )
    expected = np.array(
        [
            # offset (-1, 0, 0): slice z=0 copies z=1
            [[[1, 0, 1], [0, 0, 1]], [[1, 0, 1], [0, 0, 1]]],
            # offset (0, -1, 0): row y=0 copies y=1
            [[[1, 0, 1], [1, 0, 1]], [[0, 0, 1], [0, 0, 1]]],
            # offset (0, 0, -1): column x=0 copies x=1
            [[[1, 1, 0], [0, 0, 0]], [[0, 0, 0], [0, 0, 0]]],
        ],
        dtype=np.float32,
    )
    affinities = synthetic.affinities_from_labels(
        labels, noise=0.0, smoothing_sigma=0.0
    )
    assert affinities.dtype == np.float32
    np.testing.assert_array_equal(affinities, expected)


def test_affinities_single_slice_axis_uses_foreground() -> None:
    labels = np.array([[[1, 0], [2, 2]]], dtype=np.uint64)
    affinities = synthetic.affinities_from_labels(
        labels, noise=0.0, smoothing_sigma=0.0
    )
    np.testing.assert_array_equal(affinities[0], (labels != 0).astype(np.float32))


def test_demo_affinities_range_dtype_shape(demo: dict) -> None:
    affinities = demo["affinities"]
    assert affinities.dtype == np.float32
    assert affinities.shape == (3,) + demo["labels"].shape
    assert affinities.min() >= 0.0 and affinities.max() <= 1.0
    # Still informative after noise and blur: low on the membrane band the
    # demo draws (2 voxels, all channels), high away from it.
    clean = synthetic.affinities_from_labels(
        demo["labels"], noise=0.0, smoothing_sigma=0.0, membrane_width=2
    )
    assert affinities[clean == 0].mean() < 0.5
    assert affinities[clean == 1].mean() > 0.8
    # the mean over channels, the fragments stage's boundary map, sees the band
    assert (affinities.mean(axis=0)[clean.min(axis=0) == 0] < 0.5).mean() > 0.5


def test_membrane_band_is_low_in_every_channel() -> None:
    labels = np.ones((1, 1, 8), dtype=np.uint64)
    labels[..., 4:] = 2
    affinities = synthetic.affinities_from_labels(labels, noise=0.0, smoothing_sigma=0.0, membrane_width=2)
    # the voxels on both sides of the boundary (x = 3 and 4) are 0 in all channels
    np.testing.assert_array_equal(affinities[:, 0, 0, 3:5], 0.0)
    # along x, every edge with a band voxel at either end is 0: (2, 3), (3, 4)
    # and (4, 5), stored at x = 3, 4, 5; the band is symmetric about the
    # boundary edge (3, 4), so the lowest edge after a blur is that one
    np.testing.assert_array_equal(affinities[2, 0, 0, 3:6], 0.0)
    np.testing.assert_array_equal(affinities[2, 0, 0, [1, 2, 6, 7]], 1.0)
    blurred = synthetic.affinities_from_labels(labels, noise=0.0, smoothing_sigma=(0, 0, 1.0), membrane_width=2)
    assert int(np.argmin(blurred[2, 0, 0, 1:])) + 1 == 4
    wider = synthetic.affinities_from_labels(labels, noise=0.0, smoothing_sigma=0.0, membrane_width=4)
    np.testing.assert_array_equal(wider[:, 0, 0, 2:6], 0.0)
    np.testing.assert_array_equal(wider[2, 0, 0, 2:7], 0.0)


def test_affinities_deterministic_per_seed(small_labels: np.ndarray) -> None:
    a = synthetic.affinities_from_labels(small_labels, noise=0.3, seed=5)
    b = synthetic.affinities_from_labels(small_labels, noise=0.3, seed=5)
    c = synthetic.affinities_from_labels(small_labels, noise=0.3, seed=6)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_affinities_on_real_like_labels_with_background() -> None:
    labels = np.zeros((10, 20, 30), dtype=np.uint32)
    labels[2:8, 3:15, 4:25] = 4_000_000_000
    affinities = synthetic.affinities_from_labels(labels, noise=0.2, seed=1)
    assert affinities.shape == (3, 10, 20, 30)
    assert affinities.dtype == np.float32
    assert 0.0 <= affinities.min() and affinities.max() <= 1.0
    assert affinities[:, 5, 9, 14].min() > affinities[:, 0, 0, 0].max()


# --------------------------------------------------------------------------
# raw and demo
# --------------------------------------------------------------------------


def test_raw_membranes_darker_than_interiors(demo: dict) -> None:
    raw, labels = demo["raw"], demo["labels"]
    assert raw.dtype == np.uint8
    assert raw.shape == labels.shape
    membrane = find_boundaries(labels, connectivity=1, mode="thick")
    interior = ~ndimage.binary_dilation(membrane, iterations=2)
    assert raw[membrane].mean() < raw[interior].mean() - 40


def test_raw_deterministic_per_seed(small_labels: np.ndarray) -> None:
    a = synthetic.raw_from_labels(small_labels, seed=2)
    b = synthetic.raw_from_labels(small_labels, seed=2)
    c = synthetic.raw_from_labels(small_labels, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_demo_volume_keys_and_types(demo: dict) -> None:
    assert set(demo) == {"raw", "labels", "affinities", "voxel_size"}
    assert demo["voxel_size"] == (20, 10, 10)
    assert all(type(v) is int for v in demo["voxel_size"])
    assert demo["labels"].shape == (64, 192, 192)


def test_demo_volume_deterministic_per_seed() -> None:
    kwargs = dict(shape=(16, 48, 48), voxel_size=(20, 10, 10))
    a = synthetic.make_demo_volume(seed=7, **kwargs)
    b = synthetic.make_demo_volume(seed=7, **kwargs)
    c = synthetic.make_demo_volume(seed=8, **kwargs)
    for key in ("raw", "labels", "affinities"):
        np.testing.assert_array_equal(a[key], b[key])
        assert not np.array_equal(a[key], c[key])
