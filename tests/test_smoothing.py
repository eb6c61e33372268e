"""workers.smoothing against scipy's gaussian_filter + quantize, the definition it compiles."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from workers.smoothing import smoothed_levels
from workers.watershed import quantize


@pytest.mark.parametrize(
    "shape, sigma",
    [
        ((40, 60, 60), (0.25, 0.5, 0.5)),  # 5 nm at 20 x 10 x 10 nm, the default
        ((20, 30, 40), (1.0, 2.0, 0.7)),
        ((10, 20, 30), (0.0, 0.5, 0.5)),  # an axis left alone
        ((30, 40), (0.5, 1.5)),  # one section (fragments_in_xy)
        ((5, 6, 7), (3.0, 3.0, 3.0)),  # a kernel wider than the volume
        ((8, 9, 10), (0.1, 0.1, 0.1)),  # radius 0
    ],
)
def test_levels_equal_scipys_gaussian_then_quantize(shape, sigma):
    rng = np.random.default_rng(sum(shape))
    boundary = ndimage.gaussian_filter(rng.random(shape), 1).astype(np.float32)
    boundary = (boundary - boundary.min()) / (boundary.max() - boundary.min())
    boundary[(0,) * len(shape)] = 1.2  # out of range: clipped, as quantize clips
    smoothed = ndimage.gaussian_filter(boundary, sigma, mode="nearest", truncate=3.0) if max(sigma) > 0 else boundary
    np.testing.assert_array_equal(smoothed_levels(boundary, sigma), quantize(smoothed, 0.0, 1.0, 256))
