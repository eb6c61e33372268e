"""Tests of workers.weights: ridges, U-Net weights, sampling and LogConv."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import voronoi_cells
from scipy import ndimage as ndi

from workers.weights import (
    class_labels_with_ridges,
    instance_distances,
    lambda_kernel,
    logconv_distance,
    logconv_instance_distances,
    logconv_weights,
    random_center,
    ridge_mask,
    sampling_pdf,
    unet_weights,
    weights_context,
    weights_saturation_distance,
)

LAMBDA = 0.35
Q = math.exp(-1 / LAMBDA)  # how much one more city-block step costs inside LogConv's sum


def _two_squares() -> np.ndarray:
    labels = np.zeros((5, 8), np.uint8)
    labels[1:4, 1:4] = 1
    labels[1:4, 4:7] = 2
    return labels


def _blockwise(compute, labels: np.ndarray, block: tuple[int, ...], context: tuple[int, ...]) -> np.ndarray:
    """Run `compute` on each block's write ROI grown by `context` voxels (clipped), crop, assemble."""
    out = np.full(labels.shape, np.nan, np.float32)
    starts = [range(0, n, b) for n, b in zip(labels.shape, block)]
    for corner in itertools.product(*starts):
        write = tuple(slice(c, min(c + b, n)) for c, b, n in zip(corner, block, labels.shape))
        read = tuple(slice(max(w.start - k, 0), min(w.stop + k, n)) for w, k, n in zip(write, context, labels.shape))
        crop = tuple(slice(w.start - r.start, w.stop - r.start) for w, r in zip(write, read))
        out[write] = compute(labels[read])[crop]
    return out


def _reference_weights(labels, bws, fds, bwf, fbr, spacing) -> np.ndarray:
    """Unsaturated weights: brute-force ridges, one full EDT per instance, the formula written out."""
    ridge = np.zeros(labels.shape, bool)
    for index in np.ndindex(labels.shape):
        if labels[index]:
            window = tuple(slice(max(i - 1, 0), i + 2) for i in index)
            neighbours = labels[window]
            ridge[index] = np.any((neighbours != 0) & (neighbours != labels[index]))
    instances = np.where(ridge, 0, labels)
    ids = np.unique(instances[instances > 0])
    distances = np.stack([ndi.distance_transform_edt(instances != i, sampling=spacing) for i in ids])
    distances = np.sort(distances, axis=0)
    d1, d2 = distances[0], distances[1]
    background = fbr + (1 - fbr) * np.exp(-(d1**2) / (2 * fds**2)) + bwf * np.exp(-((d1 + d2) ** 2) / (2 * bws**2))
    return np.where(instances > 0, 1.0, background)


# -- ridges ------------------------------------------------------------------


def test_ridges_between_two_touching_squares():
    classes = class_labels_with_ridges(_two_squares())
    expected = np.zeros((5, 8), np.uint8)
    expected[1:4, [1, 2, 5, 6]] = 1  # columns 3 and 4 became the ridge
    np.testing.assert_array_equal(classes, expected)


def test_diagonal_contact_needs_full_connectivity():
    labels = np.array([[1, 0], [0, 2]])
    assert ridge_mask(labels).tolist() == [[True, False], [False, True]]
    assert not ridge_mask(labels, connectivity=1).any()


def test_background_and_array_edges_make_no_ridge():
    labels = np.zeros((4, 4), np.int32)
    labels[:, :2] = 3  # touches the array's edge and the background only
    assert not ridge_mask(labels).any()
    np.testing.assert_array_equal(class_labels_with_ridges(labels), labels > 0)


def test_ridges_with_huge_global_ids():
    labels = _two_squares().astype(np.uint64)
    huge = np.where(labels > 0, labels + np.uint64(2**60), 0).astype(np.uint64)
    np.testing.assert_array_equal(ridge_mask(huge), ridge_mask(labels))


# -- exact weights -------------------------------------------------------------


def test_instance_distances_match_edt():
    labels = voronoi_cells((10, 14, 16), n_seeds=8, radius=4, seed=1)
    spacing = (2.0, 1.0, 1.5)
    ids = np.unique(labels[labels > 0])
    per_instance = np.sort([ndi.distance_transform_edt(labels != i, sampling=spacing) for i in ids], axis=0)
    d = instance_distances(labels, spacing)
    np.testing.assert_allclose(d, per_instance[:2], rtol=0, atol=1e-12)
    np.testing.assert_allclose(instance_distances(labels, spacing, 3.0), np.minimum(per_instance[:2], 3.0), atol=1e-12)


def test_weights_by_hand_between_two_points():
    labels = np.zeros((1, 9), np.uint8)
    labels[0, 0], labels[0, 4] = 1, 2
    w = unet_weights(labels, bws=2, fds=3, bwf=10, fbr=0.1)[0]
    assert w[0] == 1 and w[4] == 1
    # Column 2: d1 = d2 = 2. Column 1: d1 = 1, d2 = 3. Column 6: d1 = 2, d2 = 6.
    assert w[2] == pytest.approx(0.1 + 0.9 * math.exp(-4 / 18) + 10 * math.exp(-16 / 8), abs=1e-6)
    assert w[1] == pytest.approx(0.1 + 0.9 * math.exp(-1 / 18) + 10 * math.exp(-16 / 8), abs=1e-6)
    assert w[6] == pytest.approx(0.1 + 0.9 * math.exp(-4 / 18) + 10 * math.exp(-64 / 8), abs=1e-6)


def test_weights_on_the_ridge_by_hand():
    w = unet_weights(_two_squares(), bws=3, fds=2, bwf=5, fbr=0.2)
    # Ridge voxel (2, 3): the rest of square 1 is 1 away, of square 2 is 2 away.
    assert w[2, 3] == pytest.approx(0.2 + 0.8 * math.exp(-1 / 8) + 5 * math.exp(-9 / 18), abs=1e-6)
    assert w[2, 4] == pytest.approx(w[2, 3], abs=1e-7)
    assert np.all(w[1:4, [1, 2, 5, 6]] == 1)


def test_saturation_stays_within_tolerance():
    labels = voronoi_cells((12, 20, 20), n_seeds=12, radius=4, seed=2)
    spacing = (2.0, 1.0, 1.0)
    parameters = dict(bws=2.0, fds=2.5, bwf=10.0, fbr=0.1)
    reference = _reference_weights(labels, spacing=spacing, **parameters)
    weights = unet_weights(labels, voxel_size=spacing, **parameters)
    assert weights.dtype == np.float32
    assert np.abs(weights - reference).max() <= 1e-6
    # Only the saturated distances differ, and they barely matter; a coarse
    # tolerance shows the bound is what the saturation costs.
    coarse = unet_weights(labels, voxel_size=spacing, tolerance=1e-2, **parameters)
    assert 1e-5 < np.abs(coarse - reference).max() <= 1e-2


@pytest.mark.parametrize("spacing", [(1, 1, 1), (2, 1, 1)])
def test_blockwise_weights_equal_whole(spacing):
    labels = voronoi_cells((20, 36, 36), n_seeds=40, radius=4, seed=3)
    parameters = dict(bws=1.5, fds=1.5, bwf=10.0, fbr=0.1)
    context = weights_context(parameters["bws"], parameters["fds"], spacing, bwf=10.0, fbr=0.1)
    context_voxels = tuple(c // s for c, s in zip(context, spacing))

    def compute(part):
        return unet_weights(part, voxel_size=spacing, **parameters)

    whole = compute(labels)
    assert np.abs(_blockwise(compute, labels, (10, 12, 12), context_voxels) - whole).max() <= 1e-6
    # The test can fail: without context ridges at block faces are lost, and
    # with half of it distances miss instances by more than the tolerance.
    assert np.abs(_blockwise(compute, labels, (10, 12, 12), (0, 0, 0)) - whole).max() > 0.1
    half = tuple(c // 2 for c in context_voxels)
    assert np.abs(_blockwise(compute, labels, (10, 12, 12), half) - whole).max() > 1e-5


def test_context_by_hand():
    radius = 10 * math.sqrt(2 * math.log(2 * 10 / 1e-7))  # the border term dominates
    assert weights_saturation_distance(10, 10, 10, 0.1, 1e-7) == pytest.approx(radius)
    assert weights_context(10, 10, (40, 8, 8)) == (40 * (math.ceil(radius / 40) + 1), 72, 72)
    # With no border weight the foreground term sets the radius.
    radius = 4 * math.sqrt(2 * math.log(2 * 0.9 / 1e-7))
    assert weights_saturation_distance(1, 4, 0, 0.1, 1e-7) == pytest.approx(radius)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(bws=0), "bws"),
        (dict(fds=-1), "fds"),
        (dict(bwf=-1), "bwf"),
        (dict(fbr=1.5), "fbr"),
        (dict(tolerance=0), "tolerance"),
    ],
)
def test_bad_weight_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        unet_weights(_two_squares(), **kwargs)


def test_bad_labels():
    with pytest.raises(ValueError, match="integer dtype"):
        unet_weights(np.ones((4, 4), np.float64))
    with pytest.raises(ValueError, match=">= 0"):
        class_labels_with_ridges(np.full((4, 4), -2))
    with pytest.raises(ValueError, match="dimensions"):
        ridge_mask(np.ones(5, np.int32))
    with pytest.raises(ValueError, match="connectivity"):
        ridge_mask(_two_squares(), connectivity=3)


# -- sampling ------------------------------------------------------------------


def test_pdf_by_hand_with_ignore():
    labels = np.array([[1, 0], [0, 0]])
    pdf = sampling_pdf(labels, fbr=0.5, ignore=np.array([[False, False], [False, True]]))
    np.testing.assert_allclose(pdf, [[0.5, 0.25], [0.25, 0.0]])
    with pytest.raises(ValueError, match="nothing to sample"):
        sampling_pdf(labels, fbr=0.0, ignore=labels > 0)


def test_scaled_pdf_keeps_every_cells_mass():
    labels = np.zeros((30, 20), np.uint8)
    labels[3, 4] = 1  # one foreground voxel: interpolation could lose it
    pdf = sampling_pdf(labels, fbr=0.1, scale=10)
    assert pdf.shape == (10, 7)
    total = 1 + 0.1 * (labels.size - 1)
    rows, cols = (np.arange(11) * 30) // 10, (np.arange(8) * 20) // 7
    assert pdf[1, 1] == pytest.approx((1 + 0.1 * ((rows[2] - rows[1]) * (cols[2] - cols[1]) - 1)) / total)
    assert pdf.sum() == pytest.approx(1)


def test_random_center_is_deterministic_and_follows_the_pdf():
    labels = np.zeros((8, 10), np.uint8)
    labels[2:4, 3:8] = 1  # 10 foreground voxels, 70 background
    pdf = sampling_pdf(labels, fbr=0.1, scale=None)
    draw = lambda seed: random_center(pdf, labels.shape, np.random.default_rng(seed), size=20000)  # noqa: E731
    centers = draw(7)
    np.testing.assert_array_equal(centers, draw(7))
    assert not np.array_equal(centers, draw(8))
    expected = 10 / (10 + 0.1 * 70)
    fraction = labels[tuple(centers.T)].mean()
    assert abs(fraction - expected) < 4 * math.sqrt(expected * (1 - expected) / 20000)
    single = random_center(pdf, labels.shape, np.random.default_rng(7))
    assert single == random_center(pdf, labels.shape, np.random.default_rng(7))
    assert isinstance(single, tuple) and all(type(c) is int for c in single)


def test_random_center_never_picks_zero_probability_and_stays_in_the_cell():
    labels = np.zeros((40, 40), np.uint8)
    labels[10:15, 20:30] = 1
    pdf = sampling_pdf(labels, fbr=0.0, scale=8)
    centers = random_center(pdf, labels.shape, np.random.default_rng(0), size=2000)
    # The foreground covers cells rows 2 (10..15) and columns 4..5 (20..30) of the 8 x 8 grid.
    assert centers[:, 0].min() >= 10 and centers[:, 0].max() < 15
    assert centers[:, 1].min() >= 20 and centers[:, 1].max() < 30
    with pytest.raises(TypeError, match="Generator"):
        random_center(pdf, labels.shape, 0)


# -- LogConv -------------------------------------------------------------------


def _lattice_points(norm: int, ndim: int) -> int:
    """Points of Z^ndim with city-block norm exactly `norm`."""
    if norm == 0:
        return 1
    return sum(2**i * math.comb(ndim, i) * math.comb(norm - 1, i - 1) for i in range(1, ndim + 1))


def _logconv_slack(taxicab: np.ndarray, ndim: int) -> np.ndarray:
    """lambda * ln N(t): how far LogConv may fall below the city-block distance t.

    Our bound, derived in logconv_distance's docstring (the seed states no
    number): the nearest mask voxel contributes exp(-t / lambda) to the sum,
    and at most n(t + k) voxels at norm t + k contribute q**k times that, so
    t - lambda ln N(t) <= LogConv <= t with N(t) = sum_k n(t + k) q**k.
    For lambda = 0.35 in 2D this is 0.53 voxels at t = 1, 1.31 at t = 10,
    1.70 at t = 30.
    """
    table = {
        t: LAMBDA * math.log(sum(_lattice_points(t + k, ndim) * Q**k for k in range(200))) for t in np.unique(taxicab)
    }
    return np.vectorize(table.get)(taxicab)


def test_lambda_kernel():
    kernel = lambda_kernel(3, 0.35)
    assert kernel[1] == 1  # deepflash2's own check
    np.testing.assert_allclose(kernel, [Q, 1, Q])
    full = lambda_kernel()
    assert full.shape == (73,) and full[0] == pytest.approx(math.exp(-36 / 0.35))
    for ks in (0, 4, 2.0):
        with pytest.raises(ValueError, match="ks"):
            lambda_kernel(ks)


def test_logconv_of_one_voxel_is_the_city_block_distance():
    mask = np.zeros((81, 81), bool)
    mask[40, 40] = True
    distance = logconv_distance(mask)
    taxicab = np.abs(np.indices(mask.shape) - 40).sum(0)
    # The kernel reaches 36 voxels along each axis; beyond, nothing is seen.
    seen = (np.abs(np.indices(mask.shape) - 40) <= 36).all(0)
    np.testing.assert_allclose(distance[seen], taxicab[seen], rtol=1e-12, atol=1e-9)
    assert np.all(np.isinf(distance[~seen]))


def test_logconv_of_a_straight_edge_by_hand():
    mask = np.zeros((40, 81), bool)
    mask[0] = True
    # Along a line the sum is exp(-d / lambda) * (1 + 2 sum_{j=1..36} q**j).
    offset = LAMBDA * math.log(1 + 2 * sum(Q**j for j in range(1, 37)))
    d = np.arange(37)
    expected = np.maximum(d - offset, 0)
    np.testing.assert_allclose(logconv_distance(mask)[d, 40], expected, atol=1e-9)
    assert offset == pytest.approx(0.0402, abs=1e-4)


@pytest.mark.parametrize("seed", [0, 1])
def test_logconv_within_its_error_bound_of_the_exact_distance(seed):
    # One random blob in each 16 x 16 cell keeps every voxel within LogConv's
    # reach (36 voxels along each axis) of the mask.
    rng = np.random.default_rng(seed)
    mask = np.zeros((48, 48), bool)
    for corner in itertools.product(range(0, 48, 16), repeat=2):
        mask[tuple(c + rng.integers(0, 16) for c in corner)] = True
    mask = ndi.binary_dilation(mask, iterations=2) | (rng.random(mask.shape) < 0.002)
    approx = logconv_distance(mask)
    euclidean = ndi.distance_transform_edt(~mask)
    taxicab = ndi.distance_transform_cdt(~mask, metric="taxicab")
    assert np.isfinite(approx).all() and taxicab.max() <= 36
    slack = _logconv_slack(taxicab, 2)
    # Against the city-block distance it approximates ...
    assert np.all(approx <= taxicab + 1e-9)
    assert np.all(approx >= taxicab - slack - 1e-9)
    # ... and so against the exact Euclidean one: e - lambda ln N(t) <= LogConv <= sqrt(2) e.
    assert np.all(approx <= math.sqrt(2) * euclidean + 1e-9)
    assert np.all(approx >= euclidean - slack - 1e-9)
    assert np.all(approx[mask] == 0)


def test_logconv_instance_distances_and_weights():
    labels = voronoi_cells((24, 30), n_seeds=6, radius=5, seed=4)[None]
    approx = logconv_instance_distances(labels)
    assert approx.shape == (1, 2, 24, 30)
    ids = np.unique(labels[labels > 0])
    taxicab = np.sort([ndi.distance_transform_cdt(labels[0] != i, metric="taxicab") for i in ids], axis=0)[:2]
    for k in range(2):
        assert np.all(approx[0, k] <= taxicab[k] + 1e-9)
        assert np.all(approx[0, k] >= taxicab[k] - _logconv_slack(taxicab[k], 2) - 1e-9)
    # Single-voxel instances on one row: LogConv is exact, so the weights match.
    row = np.zeros((1, 1, 12), np.uint8)
    row[0, 0, [0, 5, 11]] = [1, 2, 3]
    np.testing.assert_allclose(logconv_weights(row, bws=2, fds=2), unet_weights(row[0], bws=2, fds=2)[None], atol=1e-6)


# -- torch -------------------------------------------------------------------


def test_importing_weights_does_not_import_torch():
    code = "import sys, workers.weights; assert 'torch' not in sys.modules, 'torch imported'"
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_torch_logconv_equals_numpy():
    torch = pytest.importorskip("torch")
    from workers.weights import LogConv

    labels = np.stack([voronoi_cells((32, 40), n_seeds=7, radius=6, seed=s) for s in (5, 6)])
    labels[1][labels[1] == labels[1].max()] = 0  # a different set of ids in each image
    expected = logconv_instance_distances(labels)
    exact = LogConv(dtype=torch.float64)(torch.from_numpy(labels)).numpy()
    assert np.array_equal(np.isinf(exact), np.isinf(expected))
    finite = np.isfinite(expected)
    assert np.abs(exact[finite] - expected[finite]).max() <= 1e-5
    # float32, as on a GPU: equal where the sums stay clear of float32's underflow.
    fast = LogConv()(torch.from_numpy(labels)).numpy()
    near = expected < 20
    assert np.abs(fast[near] - expected[near]).max() <= 1e-5
    weights = LogConv(dtype=torch.float64).weights(torch.from_numpy(labels), bws=3, fds=3).numpy()
    np.testing.assert_allclose(weights, logconv_weights(labels, bws=3, fds=3), atol=1e-5)
    volume = voronoi_cells((6, 10, 12), n_seeds=4, radius=3, seed=7)[None]  # 3D
    three_d = LogConv(dtype=torch.float64)(torch.from_numpy(volume)).numpy()
    np.testing.assert_allclose(three_d, logconv_instance_distances(volume), atol=1e-5)
