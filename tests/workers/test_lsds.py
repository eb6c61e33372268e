"""Tests of workers.lsds against lsd-lite's ``get_lsds`` (the oracle).

The oracle computes in float32 with absolute world coordinates, so its
variance and Pearson channels carry a rounding error of about
``eps32 * (extent / sigma)**2``: ~1e-5 on a 16 x 24 x 24 volume, ~1e-4 on
64 x 128 x 128, and up to 0.5 on one-voxel objects, whose true variance is
0. Padding its input with zeros changes its output by that much. We compare:

- every channel with the oracle run in float64 (its own code, with
  ``np.float32`` swapped for ``np.float64``), which isolates the algorithm
  from that rounding: agreement is ~1e-7 (float32 output rounding);
- the offset and size channels with the stock float32 oracle within 1e-5,
  every channel within 1e-5 on a volume small enough for the oracle, and
  every channel within 1e-5 on each voxel where the stock oracle's own
  rounding (stock minus float64) is below 5e-6.
"""

from __future__ import annotations

import doctest
import re

import numpy as np
import pytest

import workers.lsds
from workers.lsds import local_shape_descriptors, lsd_context, num_channels

lsd_lite = pytest.importorskip("lsd_lite")
oracle_module = pytest.importorskip("lsd_lite.lsds")


# --------------------------------------------------------------------------
# helpers


def voronoi(shape: tuple[int, ...], cells: int, seed: int, background: float = 0.02) -> np.ndarray:
    """Voronoi cells labelled 1..cells, with a few random background voxels."""
    rng = np.random.default_rng(seed)
    seeds = rng.random((cells, len(shape))) * shape
    grid = np.indices(shape).reshape(len(shape), -1).T
    nearest = np.argmin(((grid[:, None, :] - seeds[None]) ** 2).sum(-1), axis=1)
    labels = (nearest + 1).reshape(shape).astype(np.uint64)
    labels[rng.random(shape) < background] = 0
    return labels


def with_degenerate_objects(labels: np.ndarray) -> np.ndarray:
    """Add a one-voxel object and a one-voxel-thick sheet (zero variance across it)."""
    labels = labels.copy()
    top = int(labels.max())
    labels[(2,) * labels.ndim] = top + 1
    labels[(slice(4, 5),) + (slice(3, 12),) * (labels.ndim - 1)] = top + 2
    return labels


class _Float64Numpy:
    """numpy, except that ``np.float32`` is float64: runs the oracle in double."""

    float32 = np.float64

    def __getattr__(self, name: str):
        return getattr(np, name)


def oracle(labels, sigma, voxel_size=None, downsample=1) -> np.ndarray:
    return lsd_lite.get_lsds(labels, sigma, voxel_size=voxel_size, downsample=downsample)


def oracle64(labels, sigma, voxel_size=None, downsample=1) -> np.ndarray:
    saved = oracle_module.np
    oracle_module.np = _Float64Numpy()
    try:
        return lsd_lite.get_lsds(labels, sigma, voxel_size=voxel_size, downsample=downsample)
    finally:
        oracle_module.np = saved


def offset_and_size(ndim: int) -> list[int]:
    return list(range(ndim)) + [num_channels(ndim) - 1]


CASES = {
    "3d-isotropic": dict(shape=(20, 28, 28), cells=14, sigma=4.0, voxel_size=None, downsample=1),
    "3d-anisotropic": dict(shape=(16, 32, 32), cells=16, sigma=(60, 40, 40), voxel_size=(20, 10, 10), downsample=1),
    "3d-anisotropic-sigma-scalar": dict(shape=(16, 32, 32), cells=12, sigma=50, voxel_size=(40, 8, 8), downsample=1),
    "3d-downsample-2": dict(shape=(16, 32, 32), cells=10, sigma=(80, 40, 40), voxel_size=(20, 10, 10), downsample=2),
    "2d-isotropic": dict(shape=(48, 40), cells=12, sigma=5.0, voxel_size=None, downsample=1),
    "2d-anisotropic": dict(shape=(40, 48), cells=12, sigma=(24, 16), voxel_size=(4, 2), downsample=1),
    "2d-downsample-2": dict(shape=(48, 48), cells=8, sigma=(30, 20), voxel_size=(4, 4), downsample=2),
    "2d-downsample-4": dict(shape=(64, 64), cells=6, sigma=24.0, voxel_size=None, downsample=4),
}


def case_labels(case: dict, seed: int = 0) -> np.ndarray:
    return voronoi(case["shape"], case["cells"], seed)


def compute(case: dict, labels: np.ndarray, **kwargs) -> np.ndarray:
    return local_shape_descriptors(labels, case["sigma"], case["voxel_size"], case["downsample"], **kwargs)


def run_oracle(case: dict, labels: np.ndarray, double: bool = False) -> np.ndarray:
    run = oracle64 if double else oracle
    return run(labels, case["sigma"], case["voxel_size"], case["downsample"])


# --------------------------------------------------------------------------
# against the oracle


@pytest.mark.parametrize("name", CASES)
def test_matches_oracle_in_double(name):
    case = CASES[name]
    labels = case_labels(case)
    if case["downsample"] == 1:
        labels = with_degenerate_objects(labels)
    ours = compute(case, labels)
    expected = run_oracle(case, labels, double=True)
    assert ours.dtype == np.float32 and ours.shape == expected.shape == (num_channels(labels.ndim),) + labels.shape
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", CASES)
def test_offsets_and_size_match_stock_oracle(name):
    case = CASES[name]
    labels = with_degenerate_objects(case_labels(case, seed=1))
    keep = offset_and_size(labels.ndim)
    np.testing.assert_allclose(compute(case, labels)[keep], run_oracle(case, labels)[keep], rtol=0, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_channel_matches_stock_oracle_on_a_small_volume(seed):
    # 16^3 voxels and sigma of 4 voxels keep the oracle's float32 error < 1e-5
    case = dict(shape=(16, 16, 16), cells=6, sigma=4.0, voxel_size=None, downsample=1)
    labels = case_labels(case, seed)
    np.testing.assert_allclose(compute(case, labels), run_oracle(case, labels), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", CASES)
def test_every_channel_matches_stock_oracle_where_its_float32_is_exact(name):
    """Check 1 of the targets issue on 2D/3D, iso/anisotropic, with/without downsampling.

    The stock oracle's float32 rounding is measured voxel by voxel against
    the same oracle code run in float64. Wherever that rounding is below
    5e-6 (95-100% of the voxels in these cases), our descriptors must be
    within 1e-5 of the stock output; the remaining voxels differ only by
    the oracle's own rounding, which is what the double-precision test pins.
    """
    case = CASES[name]
    labels = case_labels(case, seed=3)
    ours = compute(case, labels)
    stock = run_oracle(case, labels)
    rounding = np.abs(stock - run_oracle(case, labels, double=True))
    exact = rounding <= 5e-6
    assert exact.mean() >= 0.95, f"oracle rounding above 5e-6 on {1 - exact.mean():.1%} of the voxels"
    np.testing.assert_allclose(ours[exact], stock[exact], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["3d-anisotropic", "2d-downsample-2"])
def test_variance_and_pearson_within_stock_oracle_rounding(name):
    case = CASES[name]
    labels = case_labels(case, seed=2)
    np.testing.assert_allclose(compute(case, labels), run_oracle(case, labels), rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    "ndim, components",
    [(3, "0129"), (3, [3, 4, 5]), (3, "678"), (3, [9]), (3, "012"), (2, "0125"), (2, [2, 3, 4]), (2, "5")],
)
def test_components_select_channels(ndim, components):
    case = CASES["3d-anisotropic" if ndim == 3 else "2d-anisotropic"]
    labels = case_labels(case)
    indices = [int(c) for c in components]
    full = compute(case, labels)
    selected = compute(case, labels, components=components)
    assert selected.shape == (len(indices),) + labels.shape
    # fewer moments are computed for fewer channels; the values are the same
    np.testing.assert_allclose(selected, full[indices], rtol=0, atol=1e-7)
    np.testing.assert_allclose(selected, run_oracle(case, labels, double=True)[indices], rtol=0, atol=1e-6)


# --------------------------------------------------------------------------
# hand-checked values


def test_background_is_zero_in_every_channel():
    case = CASES["3d-isotropic"]
    labels = case_labels(case)
    labels[:, :5] = 0
    lsds = compute(case, labels)
    assert not lsds[:, labels == 0].any()
    assert (lsds[-1, labels != 0] > 0).all()


def test_centred_ball_has_no_offset_and_no_correlation():
    grid = np.indices((21, 21, 21)) - 10
    labels = ((grid**2).sum(0) <= 36).astype(np.uint8)
    lsds = local_shape_descriptors(labels, sigma=(20, 10, 10), voxel_size=(4, 2, 2))
    centre = lsds[:, 10, 10, 10]
    np.testing.assert_allclose(centre[:3], 0.5, atol=1e-6)
    np.testing.assert_allclose(centre[6:9], 0.5, atol=1e-6)
    # the offset points at the centre of mass: inward, so above 0.5 on the
    # low side of an axis and below 0.5 on the high side
    assert lsds[0, 5, 10, 10] > 0.55 and lsds[0, 15, 10, 10] < 0.45
    assert lsds[2, 10, 10, 5] > 0.55 and lsds[2, 10, 10, 15] < 0.45


def test_axis_aligned_box_has_pearson_one_half_everywhere():
    labels = np.zeros((12, 20, 24), np.uint16)
    labels[2:9, 3:17, 5:20] = 3
    lsds = local_shape_descriptors(labels, sigma=(30, 20, 20), voxel_size=(10, 5, 5))
    # a box cut by a box window is a box: its coordinates are uncorrelated
    np.testing.assert_allclose(lsds[6:9, labels == 3], 0.5, atol=1e-6)


def test_filled_window_variance_and_size_by_hand():
    # an object filling every window: size 1, no offset, and the variance
    # is the second moment of the truncated, normalised discrete Gaussian
    sigma, step = 12.0, 4.0
    labels = np.ones((40, 40), np.int32)
    lsds = local_shape_descriptors(labels, sigma=sigma, voxel_size=(step, step))
    sigma_voxels = sigma / step
    radius = int(3 * sigma_voxels + 0.5)
    taps = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (taps / sigma_voxels) ** 2)
    weights /= weights.sum()
    variance = (weights * (taps * step) ** 2).sum()
    centre = lsds[:, 20, 20]
    np.testing.assert_allclose(centre, [0.5, 0.5, variance / sigma**2, variance / sigma**2, 0.5, 1.0], atol=1e-6)


def test_degenerate_objects_have_floored_variance():
    # one voxel: zero variance on every axis, floored at 1e-3 nm^2, Pearson
    # 0.5. (The stock float32 oracle gives Pearson up to 1.0 here: rounding.)
    labels = np.zeros((12, 12, 12), np.uint32)
    labels[5, 6, 7] = 9
    lsds = local_shape_descriptors(labels, sigma=40, voxel_size=(10, 10, 10))[:, 5, 6, 7]
    np.testing.assert_allclose(lsds[:3], 0.5, atol=1e-7)
    np.testing.assert_allclose(lsds[3:6], 1e-3 / 40**2, rtol=1e-5)
    np.testing.assert_allclose(lsds[6:9], 0.5, atol=1e-7)


def test_object_missing_from_the_downsampled_grid():
    # The one-voxel object at odd indices vanishes from labels[::2, ::2]:
    # lsd-lite then writes offset 0.5 - coordinate / (2 sigma), which depends
    # on where the array starts; we write 0.5 (no offset). Other channels agree.
    labels = np.ones((8, 16, 16), np.uint8)
    labels[3, 5, 9] = 2
    sigma, voxel_size = 30, (10, 10, 10)
    lsds = local_shape_descriptors(labels, sigma, voxel_size, downsample=2)
    expected = oracle64(labels, sigma, voxel_size, downsample=2)
    np.testing.assert_allclose(lsds[:3, 3, 5, 9], 0.5)
    assert lsds[-1, 3, 5, 9] == 0
    np.testing.assert_allclose(lsds[3:, 3, 5, 9], expected[3:, 3, 5, 9], atol=1e-6)
    np.testing.assert_allclose(lsds[:, labels == 1], expected[:, labels == 1], atol=1e-6)


def test_translation_invariant():
    case = CASES["3d-anisotropic"]
    labels = case_labels(case)
    padded = np.pad(labels, ((5, 0), (7, 0), (9, 0)))
    shifted = compute(case, padded)[:, 5:, 7:, 9:]
    np.testing.assert_allclose(shifted, compute(case, labels), rtol=0, atol=1e-6)


def test_fractional_voxel_size_is_honoured():
    # descriptors are normalised by sigma, so scaling voxel size and sigma
    # together changes nothing; lsd-lite would truncate 4.5 nm to 4 nm
    labels = case_labels(CASES["3d-anisotropic"])
    fine = local_shape_descriptors(labels, (45, 40, 40), voxel_size=(4.5, 4, 4))
    coarse = local_shape_descriptors(labels, (90, 80, 80), voxel_size=(9, 8, 8))
    np.testing.assert_allclose(fine, coarse, rtol=0, atol=1e-6)


def test_labels_of_any_integer_type_and_large_ids():
    case = CASES["2d-isotropic"]
    labels = case_labels(case)
    expected = compute(case, labels)
    huge = np.where(labels > 0, labels + np.uint64(2**40), 0)
    for variant in (labels.astype(np.int16), labels.astype(np.uint8), huge, np.asfortranarray(labels)):
        np.testing.assert_array_equal(compute(case, variant), expected)
    assert not compute(case, np.zeros((8, 8), np.uint32)).any()


def test_module_examples():
    assert doctest.testmod(workers.lsds).failed == 0


# --------------------------------------------------------------------------
# blockwise = whole


def _blockwise(labels, sigma, voxel_size, downsample, block, context_voxels) -> np.ndarray:
    """Each block on its write ROI grown by the context, clipped to the volume, then cropped."""
    out = np.zeros((num_channels(labels.ndim),) + labels.shape, np.float32)
    for corner in np.ndindex(*[-(-s // b) for s, b in zip(labels.shape, block)]):
        write = [slice(c * b, min((c + 1) * b, s)) for c, b, s in zip(corner, block, labels.shape)]
        read = [slice(max(w.start - c, 0), min(w.stop + c, s)) for w, c, s in zip(write, context_voxels, labels.shape)]
        lsds = local_shape_descriptors(labels[tuple(read)], sigma, voxel_size, downsample)
        crop = tuple(slice(w.start - r.start, w.stop - r.start) for w, r in zip(write, read))
        out[(slice(None),) + tuple(write)] = lsds[(slice(None),) + crop]
    return out


@pytest.mark.parametrize(
    "sigma, voxel_size, downsample, block",
    [
        ((60, 40, 40), (20, 10, 10), 1, (10, 16, 16)),
        (45, (10, 10, 10), 1, (12, 12, 20)),
        ((80, 40, 40), (20, 10, 10), 2, (8, 16, 16)),
    ],
)
def test_blockwise_equals_whole(sigma, voxel_size, downsample, block):
    labels = voronoi((24, 48, 48), cells=30, seed=3)
    context = lsd_context(sigma, voxel_size, downsample)
    assert all(c % (v * downsample) == 0 for c, v in zip(context, voxel_size))
    context_voxels = [c // v for c, v in zip(context, voxel_size)]
    whole = local_shape_descriptors(labels, sigma, voxel_size, downsample)
    blockwise = _blockwise(labels, sigma, voxel_size, downsample, block, context_voxels)
    np.testing.assert_allclose(blockwise, whole, rtol=0, atol=1e-6)


def test_less_context_is_not_enough():
    sigma, voxel_size, block = (60, 40, 40), (20, 10, 10), (10, 16, 16)
    labels = voronoi((24, 48, 48), cells=30, seed=3)
    context_voxels = [c // v - 1 for c, v in zip(lsd_context(sigma, voxel_size), voxel_size)]
    whole = local_shape_descriptors(labels, sigma, voxel_size)
    blockwise = _blockwise(labels, sigma, voxel_size, 1, block, context_voxels)
    assert np.abs(blockwise - whole).max() > 1e-6


def test_lsd_context_values():
    assert lsd_context(80, (10, 10, 10)) == (240, 240, 240)
    assert lsd_context((120, 80, 80), (40, 8, 8)) == (360, 240, 240)  # radius 9 and 30 voxels
    assert lsd_context(80, (10, 10, 10), downsample=4) == (240, 240, 240)  # 6 cells of 4 voxels
    assert lsd_context(70, (10, 10, 10), downsample=4) == (200, 200, 200)  # int(5.25 + .5) = 5 cells
    assert lsd_context((30, 20), (4, 4)) == (92, 60)


# --------------------------------------------------------------------------
# bad input


LABELS_3D = np.ones((4, 4, 4), np.uint32)


@pytest.mark.parametrize(
    "labels, kwargs, message",
    [
        (LABELS_3D.astype(np.float32), {}, "labels must have an integer dtype, got float32"),
        (-LABELS_3D.astype(np.int32), {}, "labels must be non-negative, got minimum -1"),
        (np.ones(8, np.uint32), {}, "labels must be 2D or 3D, got 1D"),
        (np.ones((2, 2, 2, 2), np.uint32), {}, "labels must be 2D or 3D, got 4D"),
        (LABELS_3D, dict(sigma=0), "sigma must be positive and finite, got 0"),
        (LABELS_3D, dict(sigma=(10, -1, 10)), "sigma must be positive and finite, got (10, -1, 10)"),
        (LABELS_3D, dict(sigma=float("nan")), "sigma must be positive and finite, got nan"),
        (LABELS_3D, dict(sigma=(10, 10)), "sigma must have 3 values (one per axis), got 2"),
        (LABELS_3D, dict(sigma="10"), "sigma must be a number or one number per axis, got '10'"),
        (LABELS_3D, dict(voxel_size=(1, 0, 1)), "voxel_size must be positive and finite, got (1, 0, 1)"),
        (LABELS_3D, dict(voxel_size=(1, 1)), "voxel_size must have 3 values (one per axis), got 2"),
        (LABELS_3D, dict(downsample=0), "downsample must be a positive integer, got 0"),
        (LABELS_3D, dict(downsample=1.5), "downsample must be a positive integer, got 1.5"),
        (LABELS_3D, dict(downsample=3), "labels shape (4, 4, 4) must be divisible by downsample 3 on every axis"),
        (LABELS_3D, dict(components="01a"), "components must be a string of channel digits such as '012', got '01a'"),
        (LABELS_3D, dict(components=[0, 10]), "unknown component 10: 3D labels have channels 0..9"),
        (np.ones((4, 4), np.uint32), dict(components="06"), "unknown component 6: 2D labels have channels 0..5"),
        (LABELS_3D, dict(components="10"), "components must be in ascending order without repeats, got '10'"),
        (LABELS_3D, dict(components=[1, 1]), "components must be in ascending order without repeats, got [1, 1]"),
        (LABELS_3D, dict(components=[]), "components must be channel indices such as [0, 1, 2], got []"),
        (LABELS_3D, dict(components=5), "components must be channel indices such as [0, 1, 2], got 5"),
    ],
)
def test_bad_input(labels, kwargs, message):
    kwargs = dict(dict(sigma=10.0), **kwargs)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        local_shape_descriptors(labels, **kwargs)


@pytest.mark.parametrize(
    "args, message",
    [
        ((0, (10, 10, 10)), "sigma must be positive and finite, got 0"),
        ((80, (10, 10, 10, 10)), "voxel_size must have one value per axis (2 or 3), got (10, 10, 10, 10)"),
        ((80, (4.5, 4, 4)), "voxel_size must be whole numbers of nm, got (4.5, 4, 4)"),
        ((80, 10), "voxel_size must have one value per axis (2 or 3), got 10"),
        ((80, (10, 10, 10), 0), "downsample must be a positive integer, got 0"),
    ],
)
def test_bad_context_input(args, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        lsd_context(*args)
