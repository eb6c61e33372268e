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


def read_boundary_map(volume: Volume, roi: Roi, cached: bool = False) -> np.ndarray:
    """A boundary map's values over ``roi`` as float32 ``(z, y, x)``; outside the data: 1 (boundary)."""
    pad = 255 if volume.dtype == np.uint8 else 1.0
    data = volume.read(roi, pad_value=pad, cached=cached)
    if data.ndim == 4:  # a (1, z, y, x) map
        data = data[0]
    return as_float(data)


def read_affinities(volume: Volume, kind: str, roi: Roi, cached: bool = False) -> np.ndarray:
    """Nearest-neighbour affinities ``(3, z, y, x)`` of ``roi`` (padded outside the data).

    Stored affinities come as stored (float, or uint8 x 255: the agglomerate
    worker scales them itself); affinities derived from boundaries are float32.

    Parameters
    ----------
    volume : Volume
        The run's affinities or boundary map.
    kind : {"affinities", "boundaries"}
        Which of the two ``volume`` holds.
    roi : Roi
        The block's read ROI.
    cached : bool
        Through the worker's chunk cache (:mod:`blockseg.chunk_cache`).
    """
    if kind == AFFINITIES:
        return volume.read(roi, cached=cached)[:3]
    return _from_boundaries(volume, kind, roi, cached)[0]


def _from_boundaries(volume: Volume, kind: str, roi: Roi, cached: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Derived affinities ``(3, z, y, x)`` and the boundary map of ``roi``, from one read."""
    if kind != BOUNDARIES:
        raise ValueError(f"unknown source kind {kind!r}")
    # one voxel more on the low faces: each voxel's affinity looks one step back
    grown = read_boundary_map(volume, roi.grow(volume.voxel_size, (0,) * len(volume.voxel_size)), cached)
    inner = (slice(1, None),) * grown.ndim
    affinities = fragments_worker.affinities_from_boundaries(grown)[(slice(None),) + inner]
    return np.ascontiguousarray(affinities), np.ascontiguousarray(grown[inner])


def read_block_inputs(
    volume: Volume, kind: str, roi: Roi, need_affinities: bool, cached: bool = False
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """What a fragments block reads: float32 affinities (if needed), the boundary map and the mean affinity.

    From stored affinities the boundary map is one minus their mean, and the
    float copy of all channels is only made when a step needs it (the mutex
    watershed, epsilon agglomeration). From boundaries, the map is the input
    and the mean is that of the derived affinities.
    """
    if kind == AFFINITIES:
        stored = volume.read(roi, cached=cached)[:3]
        mean = fragments_worker.mean_affinity(stored)
        affinities = as_float(stored) if need_affinities else None
        return affinities, np.float32(1) - mean, mean
    affinities, boundary = _from_boundaries(volume, kind, roi, cached)
    return affinities, boundary, affinities.mean(axis=0, dtype=np.float32)


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
