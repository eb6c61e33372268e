"""workers.seeds against scipy's minimum filter and label, the definition it compiles."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from workers.seeds import minima_seeds


def _scipy_seeds(levels, footprint, mask=None):
    minima = levels == ndimage.minimum_filter(levels, size=footprint, mode="nearest")
    if mask is not None:
        minima &= mask
    return ndimage.label(minima, structure=np.ones((3,) * levels.ndim, bool))[0]


@pytest.mark.parametrize(
    "shape, footprint, levels",
    [
        ((40, 60, 60), (5, 11, 11), 256),  # the default seed box at 20 x 10 x 10 nm
        ((20, 30, 40), (3, 5, 7), 8),  # few levels: wide plateaus that touch by corners
        ((15, 17, 19), (1, 1, 1), 4),
        ((10, 40, 3), (5, 3, 9), 3),  # a box wider than the volume
        ((30, 50), (7, 5), 16),  # one section (fragments_in_xy)
    ],
)
@pytest.mark.parametrize("masked", [False, True])
def test_seeds_equal_scipys_minimum_filter_and_label(shape, footprint, levels, masked):
    rng = np.random.default_rng(len(shape) * 100 + levels)
    image = (ndimage.gaussian_filter(rng.random(shape), 1.5) * levels).astype(np.uint8)
    mask = rng.random(shape) > 0.3 if masked else None
    expected = _scipy_seeds(image, footprint, mask)
    assert expected.max() > 0
    np.testing.assert_array_equal(minima_seeds(image, footprint, mask), expected)


def test_even_footprint_is_refused():
    with pytest.raises(ValueError, match="odd"):
        minima_seeds(np.zeros((4, 4, 4), np.uint8), (3, 4, 3))
