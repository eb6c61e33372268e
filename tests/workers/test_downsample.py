"""Mean and mode downsampling against a window-by-window loop and skimage's block_reduce."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
from skimage.measure import block_reduce

from workers.downsample import (
    cumulative_factors,
    downsample_mean,
    downsample_mode,
    downsampled_shape,
    pyramid,
    pyramid_factors,
)


def _windows(shape, factor):
    """(output index, input slices) of every window, partial ones included, by plain loops."""
    ranges = [range(0, s, f) for s, f in zip(shape, factor)]
    for starts in itertools.product(*ranges):
        index = tuple(s // f for s, f in zip(starts, factor))
        yield index, tuple(slice(s, min(s + f, n)) for s, f, n in zip(starts, factor, shape))


def _loop_mode(labels, factor):
    out = np.zeros(downsampled_shape(labels.shape, factor), labels.dtype)
    for index, window in _windows(labels.shape, factor):
        counts = Counter(labels[window].ravel().tolist())
        top = max(counts.values())
        out[index] = min(value for value, count in counts.items() if count == top)
    return out


def _loop_mean(array, factor):
    out = np.zeros(downsampled_shape(array.shape, factor), np.float64)
    for index, window in _windows(array.shape, factor):
        out[index] = array[window].astype(np.float64).mean()
    return out


@pytest.mark.parametrize(
    "shape, factor",
    # small windows are counted pairwise, windows over 16 voxels by sorting: both paths
    [((6, 8, 8), (1, 2, 2)), ((5, 7, 9), (2, 2, 2)), ((3, 10, 11), (1, 3, 4)), ((9, 10, 11), (4, 4, 4))],
)
def test_mode_matches_loop(shape, factor):
    rng = np.random.default_rng(sum(shape))
    # few labels, so ties are frequent and the tie rule is exercised
    labels = rng.integers(0, 4, shape).astype(np.uint64) * np.uint64(2**40)
    assert np.array_equal(downsample_mode(labels, factor), _loop_mode(labels, factor))


def test_mode_tie_goes_to_smallest_label():
    labels = np.array([[7, 3], [3, 7]], np.int32)
    assert downsample_mode(labels, (2, 2)).tolist() == [[3]]
    labels = np.array([[0, 9], [9, 0]], np.uint64)
    assert downsample_mode(labels, (2, 2)).tolist() == [[0]]


def test_mode_never_invents_a_label():
    rng = np.random.default_rng(3)
    labels = rng.choice(np.array([0, 11, 2**63 + 5], np.uint64), size=(9, 13, 15))
    for level in pyramid(labels, [(1, 2, 2), (2, 2, 2), (2, 2, 2)], "mode")[1:]:
        assert set(np.unique(level)) <= set(np.unique(labels))


@pytest.mark.parametrize("shape, factor", [((6, 8, 8), (1, 2, 2)), ((5, 7, 9), (2, 2, 2)), ((4, 9, 10), (3, 1, 4))])
def test_float_mean_matches_loop(shape, factor):
    array = np.random.default_rng(1).random(shape, dtype=np.float32)
    result = downsample_mean(array, factor)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, _loop_mean(array, factor), rtol=1e-6)


def test_mean_of_whole_windows_matches_block_reduce():
    array = np.random.default_rng(2).random((4, 8, 12))
    expected = block_reduce(array, (2, 2, 4), np.mean)
    np.testing.assert_allclose(downsample_mean(array, (2, 2, 4)), expected, rtol=1e-12)


def test_integer_mean_rounds_to_nearest():
    array = np.array([[0, 1, 255, 255], [0, 2, 255, 254]], np.uint8)
    # means 0.75 and 254.75
    assert downsample_mean(array, (2, 2)).tolist() == [[1, 255]]
    array = np.random.default_rng(4).integers(0, 256, (5, 6, 7)).astype(np.uint8)
    assert np.array_equal(downsample_mean(array, (2, 2, 2)), np.rint(_loop_mean(array, (2, 2, 2))).astype(np.uint8))


def test_channel_axes_are_kept():
    affinities = np.random.default_rng(5).random((3, 4, 6, 6), dtype=np.float32)
    result = downsample_mean(affinities, (1, 2, 2))
    assert result.shape == (3, 4, 3, 3)
    for c in range(3):
        np.testing.assert_allclose(result[c], _loop_mean(affinities[c], (1, 2, 2)), rtol=1e-6)


def test_block_of_the_grid_equals_part_of_the_whole():
    """A block starting at a multiple of the total factor gives the whole result's part, levels included."""
    labels = np.random.default_rng(6).integers(0, 5, (8, 20, 22)).astype(np.uint64)
    factors = [(1, 2, 2), (2, 2, 2)]
    whole = pyramid(labels, factors, "mode")
    total = cumulative_factors(factors)
    block = (slice(4, 8), slice(8, 20), slice(16, 22))  # the far-end block, partial windows
    part = pyramid(labels[block], factors, "mode")
    for level, factor, piece in zip(whole, total, part):
        start = tuple(s.start // f for s, f in zip(block, factor))
        assert np.array_equal(level[tuple(slice(s, s + n) for s, n in zip(start, piece.shape))], piece)


def test_pyramid_factors():
    assert pyramid_factors((40, 8, 8), 4) == [(1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)]
    assert pyramid_factors((8, 8, 8), 2) == [(2, 2, 2), (2, 2, 2)]
    assert pyramid_factors((40, 8, 8), 2, factor=[1, 2, 2]) == [(1, 2, 2), (1, 2, 2)]
    assert cumulative_factors([(1, 2, 2), (1, 2, 2), (2, 2, 2)])[-1] == (2, 8, 8)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: downsample_mode(np.zeros((4, 4)), (2, 2)), "integer labels"),
        (lambda: downsample_mean(np.zeros((4, 4), bool), (2, 2)), "integer or floating"),
        (lambda: downsample_mean(np.zeros((4, 4)), (0, 2)), "positive integers"),
        (lambda: downsample_mean(np.zeros((4, 4)), (1.5, 2)), "positive integers"),
        (lambda: downsample_mean(np.zeros(4), (2, 2)), "only 1 axes"),
        (lambda: pyramid(np.zeros(4), [(2,)], "median"), "'mean' or 'mode'"),
        (lambda: pyramid_factors((8, 8, 8), 0), "levels must be a positive integer"),
        (lambda: pyramid_factors((8, 8, 8), 2, factor=(2, 2)), "one value per axis"),
    ],
)
def test_bad_input_is_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()
