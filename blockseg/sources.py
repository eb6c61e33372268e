"""What the fragments and agglomerate stages read for a block: affinities or a boundary map, and a mask.

A run segments either nearest-neighbour affinities (``input.affinities`` or
a stage that makes them) or a single-channel boundary probability map
(``input.boundaries``). Both stages need both views of the data (the
watersheds flood a boundary map, waterz scores affinities), so one is
derived from the other per block, in memory, and never written:

- from affinities, the boundary map is one minus the mean of the first three
  channels;
- from boundaries, the affinity of a voxel and its neighbour one step back
  is one minus the larger boundary value of the two (so a block reads one
  voxel more on each low face). Outside the data the map reads as boundary,
  which gives the volume's first plane an affinity of 0, as affinities
  stored for the whole volume have there.

A tissue mask (``input.mask``) may have a coarser voxel size, any whole
multiple of the input's; it is read at its own resolution and repeated.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from blockseg.geometry import Roi
from blockseg.volume import Volume
from workers import fragments as fragments_worker

AFFINITIES = "affinities"
BOUNDARIES = "boundaries"


def as_float(values: np.ndarray) -> np.ndarray:
    """float32 in [0, 1]; uint8 storage is value / 255."""
    if values.dtype == np.uint8:
        return values.astype(np.float32) / np.float32(255)
    return values.astype(np.float32, copy=False)


def read_boundary_map(volume: Volume, roi: Roi) -> np.ndarray:
    """A boundary map's values over ``roi`` as float32 ``(z, y, x)``; outside the data: 1 (boundary)."""
    pad = 255 if volume.dtype == np.uint8 else 1.0
    data = volume.read(roi, pad_value=pad)
    if data.ndim == 4:  # a (1, z, y, x) map
        data = data[0]
    return as_float(data)


def read_affinities_and_boundary(volume: Volume, kind: str, roi: Roi) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour affinities ``(3, z, y, x)`` and a boundary map ``(z, y, x)`` of ``roi``, float32.

    Parameters
    ----------
    volume : Volume
        The run's affinities or boundary map.
    kind : {"affinities", "boundaries"}
        Which of the two ``volume`` holds.
    roi : Roi
        The block's read ROI (padded outside the data).
    """
    voxel_size = volume.voxel_size
    if kind == AFFINITIES:
        affinities = as_float(volume.read(roi)[:3])
        return affinities, fragments_worker.boundary_from_affinities(affinities)
    if kind != BOUNDARIES:
        raise ValueError(f"unknown source kind {kind!r}")
    # one voxel more on the low faces: each voxel's affinity looks one step back
    boundary = read_boundary_map(volume, roi.grow(voxel_size, (0,) * len(voxel_size)))
    inner = (slice(1, None),) * boundary.ndim
    affinities = fragments_worker.affinities_from_boundaries(boundary)[(slice(None),) + inner]
    return np.ascontiguousarray(affinities), np.ascontiguousarray(boundary[inner])


def read_mask(mask: Volume, roi: Roi, voxel_size: Sequence[int]) -> np.ndarray:
    """The mask over ``roi`` at ``voxel_size`` (a divisor of the mask's), bool; outside the mask's data: False."""
    factors = tuple(m // v for m, v in zip(mask.voxel_size, voxel_size))
    coarse_roi = roi.snap(mask.voxel_size, "grow")
    coarse = mask.read(coarse_roi) != 0
    fine = coarse
    for axis, factor in enumerate(factors):
        if factor > 1:
            fine = np.repeat(fine, factor, axis=axis)
    return np.ascontiguousarray(fine[roi.slices(voxel_size, coarse_roi.offset)])
