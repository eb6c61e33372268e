"""Synthetic, EM-like test volumes for the segmentation pipeline.

The demo of blockseg segments neuron-like objects from affinities with a
seeded watershed followed by hierarchical agglomeration. To exercise that
without real data this module builds

* dense ground-truth labels: a Voronoi tessellation in world units (so
  anisotropic voxels are respected) whose cells are stretched along one axis
  and whose coordinates are smoothly warped, giving curved, neurite-like
  objects instead of flat-faced polyhedra;
* nearest-neighbour affinities computed from labels, with noise and blur;
* an EM-like raw image: bright cytoplasm, dark membranes, texture noise.

Only numpy, scipy and scikit-image are used, and every function is
deterministic for a given seed.

Examples
--------
>>> demo = make_demo_volume(shape=(16, 48, 48))
>>> demo["affinities"].shape
(3, 16, 48, 48)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from blockseg.synthetic_images import (  # noqa: F401
    _boundary_mask,
    _clean_affinity,
    _object_offsets,
    _texture,
    affinities_from_labels,
    per_section_instances,
    raw_from_labels,
    serial_section_affinities,
)
from blockseg.synthetic_labels import (  # noqa: F401
    _MAX_FILL_ITERATIONS,
    _QUERY_CHUNK_VOXELS,
    Shape3,
    Size3,
    _as_shape,
    _grow_into,
    _interpolate_separable,
    _largest_component_mask,
    _make_contiguous,
    _nearest_seed_labels,
    _smooth_displacement,
    _take_from_neighbour,
    _voronoi_seeds,
    make_labels,
)


# --------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------


def make_demo_volume(
    shape: Shape3 = (64, 192, 192),
    voxel_size: tuple[int, int, int] = (20, 10, 10),
    seed: int = 0,
    noise: float = 0.1,
) -> dict[str, Any]:
    """Make labels, raw and affinities of one synthetic demo volume.

    Parameters
    ----------
    shape : tuple of int
        Volume shape in voxels.
    voxel_size : tuple of int
        Voxel size in nm.
    seed : int, optional
        Master seed; labels, affinities and raw use independent streams
        derived from it.
    noise : float, optional
        Affinity noise standard deviation.

    Returns
    -------
    dict
        ``'raw'`` (uint8), ``'labels'`` (uint64), ``'affinities'``
        (float32, ``(3, *shape)``) and ``'voxel_size'`` (tuple of int).
    """
    label_seed, affinity_seed, raw_seed = (
        int(s) for s in np.random.SeedSequence(seed).generate_state(3)
    )
    voxel = tuple(int(v) for v in voxel_size)
    labels = make_labels(shape, voxel, seed=label_seed)
    return {
        "raw": raw_from_labels(labels, seed=raw_seed),
        "labels": labels,
        "affinities": affinities_from_labels(labels, noise=noise, seed=affinity_seed, membrane_width=2),
        "voxel_size": voxel,
    }
