"""The boundary map's Gaussian smoothing and quantisation to flood levels, in one compiled pass per axis.

``quantize(gaussian_filter(boundary, sigma, mode="nearest", truncate=3.0),
0, 1, 256)`` is what the boundary watershed floods. scipy's filter makes one
pass per axis through line buffers of doubles; for the small kernels a
fragments block uses (sigma of a voxel or less: 3 to 5 taps) that costs
more than the arithmetic. The passes here do the same arithmetic in the same
order (each output value starts from the centre tap, then adds the pairs of
taps from the outermost in, in double precision, and is stored as float32
after each axis, as scipy stores it), so the levels are the same array; the
outer axes run over whole rows, which vectorise.

Examples
--------
>>> import numpy as np
>>> boundary = np.zeros((1, 1, 5), np.float32)
>>> boundary[0, 0, 2] = 1
>>> smoothed_levels(boundary, (0.0, 0.0, 1.0)).tolist()
[[[14, 62, 102, 62, 14]]]
"""

from __future__ import annotations

from typing import Sequence

import numba
import numpy as np

__all__ = ["gaussian_weights", "smoothed_levels"]

TRUNCATE = 3.0


def gaussian_weights(sigma: float, truncate: float = TRUNCATE) -> np.ndarray:
    """The normalised taps of a Gaussian of ``sigma`` voxels, radius ``int(truncate * sigma + 0.5)``, float64."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1)
    taps = np.exp(-0.5 / (float(sigma) * float(sigma)) * x**2)
    return taps / taps.sum()


@numba.njit(cache=True, nogil=True)
def _smooth_axis(values: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """One pass of the symmetric kernel ``weights`` along ``axis`` of a 3D float32 array, edges replicated."""
    nz, ny, nx = values.shape
    radius = (weights.size - 1) // 2
    centre = weights[radius]
    out = np.empty_like(values)
    line = np.empty(nx, np.float64)
    if axis == 2:
        padded = np.empty(nx + 2 * radius, np.float64)
        for z in range(nz):
            for y in range(ny):
                for i in range(nx + 2 * radius):
                    padded[i] = values[z, y, min(max(i - radius, 0), nx - 1)]
                for x in range(nx):
                    total = padded[x + radius] * centre
                    for j in range(radius, 0, -1):
                        total += (padded[x + radius - j] + padded[x + radius + j]) * weights[radius - j]
                    out[z, y, x] = np.float32(total)
        return out
    length = nz if axis == 0 else ny
    for a in range(nz if axis == 1 else 1):
        for i in range(length):
            for b in range(ny if axis == 0 else 1):
                z = i if axis == 0 else a
                y = b if axis == 0 else i
                for x in range(nx):
                    line[x] = np.float64(values[z, y, x]) * centre
                for j in range(radius, 0, -1):
                    low = max(i - j, 0)
                    high = min(i + j, length - 1)
                    w = weights[radius - j]
                    if axis == 0:
                        for x in range(nx):
                            line[x] += (np.float64(values[low, y, x]) + np.float64(values[high, y, x])) * w
                    else:
                        for x in range(nx):
                            line[x] += (np.float64(values[z, low, x]) + np.float64(values[z, high, x])) * w
                for x in range(nx):
                    out[z, y, x] = np.float32(line[x])
    return out


@numba.njit(cache=True, nogil=True)
def _to_levels(values: np.ndarray) -> np.ndarray:
    """``rint(clip(values * 255, 0, 255))`` as uint8, in float32 arithmetic as ``quantize`` does it."""
    out = np.empty(values.shape, np.uint8)
    flat = values.ravel()
    flat_out = out.ravel()
    scale = np.float32(255.0)
    for i in range(flat.size):
        v = flat[i] * scale
        if v < np.float32(0.0):
            v = np.float32(0.0)
        elif v > scale:
            v = scale
        flat_out[i] = np.uint8(np.rint(v))
    return out


def smoothed_levels(boundary: np.ndarray, sigma: Sequence[float]) -> np.ndarray:
    """256 flood levels of a 2D or 3D boundary map in [0, 1] after a Gaussian of ``sigma`` voxels per axis.

    Axes whose sigma is 0 (or below 1e-15, as scipy has it) are not smoothed.
    """
    values = np.ascontiguousarray(boundary, np.float32)
    flat2d = values.ndim == 2
    volume = values[None] if flat2d else values
    sigmas = (0.0, *sigma) if flat2d else tuple(sigma)
    for axis, s in enumerate(sigmas):
        if s > 1e-15:
            volume = _smooth_axis(volume, gaussian_weights(s), axis)
    levels = _to_levels(volume)
    return levels[0] if flat2d else levels
