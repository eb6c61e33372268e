"""Synthetic dense ground-truth labels: warped, stretched Voronoi cells.

:func:`make_labels` tessellates the volume in world units (so anisotropic
voxels are respected) around random seeds, with cells stretched along one
axis and coordinates smoothly warped, which gives curved, neurite-like
objects; detached pieces of a cell are absorbed by their neighbours, so that
every object is one connected component.

Examples
--------
>>> labels = make_labels((8, 24, 24), (20, 10, 10))
>>> labels.shape, labels.dtype
((8, 24, 24), dtype('uint64'))
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.measure import label as connected_components


Shape3 = tuple[int, int, int]
Size3 = tuple[float, float, float]

# Voxels queried against the seed tree at once; bounds the temporary
# coordinate arrays to a few tens of MB whatever the volume size.
_QUERY_CHUNK_VOXELS = 1 << 21

# Neighbour-growth iterations used to absorb detached fragments into
# adjacent objects; fragments are thin slivers, so a few steps suffice.
_MAX_FILL_ITERATIONS = 64


def make_labels(
    shape: Shape3,
    voxel_size: Size3,
    seed: int = 0,
    mean_object_size_nm: float = 300.0,
    elongation: float = 2.0,
    elongation_axis: int = 0,
    warp_amplitude: float = 0.25,
    min_object_fraction: float = 0.02,
) -> np.ndarray:
    """Make dense, neurite-like ground-truth instance labels.

    Parameters
    ----------
    shape : tuple of int
        Volume shape in voxels, ``(z, y, x)``.
    voxel_size : tuple of float
        Voxel size in nm per axis.
    seed : int, optional
        Seed of the random generator.
    mean_object_size_nm : float, optional
        Typical object width in nm (the cube root of the mean Voronoi cell
        volume before stretching).
    elongation : float, optional
        Factor by which objects are longer along ``elongation_axis`` than
        across it; neurites run roughly in one direction.
    elongation_axis : int, optional
        Axis along which objects are stretched.
    warp_amplitude : float, optional
        Standard deviation of the smooth coordinate warp, as a fraction of
        ``mean_object_size_nm``. Kept well below 1 so the warp stays close
        to a diffeomorphism and rarely splits objects.
    min_object_fraction : float, optional
        Objects (or detached fragments) smaller than this fraction of the
        mean object volume are absorbed by their neighbours; they are
        slivers of cells that barely enter the volume.

    Returns
    -------
    numpy.ndarray
        ``uint64`` array of ``shape`` with consecutive ids ``1..N`` and no
        background; every id is a single 6-connected component.
    """
    shape = _as_shape(shape)
    spacing = np.asarray(voxel_size, dtype=np.float64)
    rng = np.random.default_rng(seed)
    stretch = np.ones(3)
    stretch[elongation_axis] = elongation
    sigma_nm = warp_amplitude * mean_object_size_nm

    displacement = _smooth_displacement(
        shape, spacing, sigma_nm, mean_object_size_nm, rng
    )
    seeds = _voronoi_seeds(shape, spacing, stretch, mean_object_size_nm, sigma_nm, rng)
    labels = _nearest_seed_labels(shape, spacing, stretch, displacement, seeds)
    del displacement
    mean_voxels = mean_object_size_nm**3 * elongation / float(np.prod(spacing))
    return _make_contiguous(labels, min_size=int(min_object_fraction * mean_voxels))


def _as_shape(shape: tuple[int, ...]) -> Shape3:
    """Validate and return a 3-d shape as a tuple of ints."""
    if len(shape) != 3 or any(int(s) < 1 for s in shape):
        raise ValueError(f"expected a positive 3-d shape, got {shape!r}")
    return tuple(int(s) for s in shape)  # type: ignore[return-value]


def _voronoi_seeds(
    shape: Shape3,
    spacing: np.ndarray,
    stretch: np.ndarray,
    size_nm: float,
    margin_nm: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Draw uniform seed points in stretched world space.

    Seeds are drawn in a box padded by one object size plus the warp margin
    so cells at the volume border are cut like interior ones rather than
    growing into large border slabs.

    Returns
    -------
    numpy.ndarray
        ``(n, 3)`` float64 seed coordinates, already divided by ``stretch``.
    """
    pad = size_nm + 2.0 * margin_nm
    low = (-pad) / stretch
    high = (np.asarray(shape) * spacing + pad) / stretch
    # In stretched space cells are isotropic with volume size_nm**3.
    n_seeds = max(1, int(round(np.prod(high - low) / size_nm**3)))
    return rng.uniform(low, high, size=(n_seeds, 3))


def _smooth_displacement(
    shape: Shape3,
    spacing: np.ndarray,
    sigma_nm: float,
    correlation_nm: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Make a smooth random displacement field in nm.

    Noise is drawn on a coarse grid (spacing ``correlation_nm``) and
    interpolated up, which is far cheaper than blurring full-resolution
    noise and gives a correlation length of about one object.

    Returns
    -------
    numpy.ndarray
        ``float32`` array of shape ``(3, *shape)``.
    """
    out = np.zeros((3,) + shape, dtype=np.float32)
    if sigma_nm <= 0:
        return out
    extent = np.asarray(shape) * spacing
    # One coarse sample per object size plus a sigma-1 blur keeps the
    # displacement gradient well below 1, so the warp rarely folds space.
    step = correlation_nm
    coarse_shape = tuple(int(np.ceil(e / step)) + 4 for e in extent)
    # Coarse grid coordinate of every voxel centre, per axis (separable).
    axes = [
        (np.arange(n) + 0.5) * s / step + 2.0 for n, s in zip(shape, spacing)
    ]
    for c in range(3):
        coarse = ndimage.gaussian_filter(
            rng.standard_normal(coarse_shape), sigma=1.0, mode="wrap"
        )
        coarse *= sigma_nm / max(float(coarse.std()), 1e-12)
        out[c] = _interpolate_separable(coarse, axes)
    return out


def _interpolate_separable(coarse: np.ndarray, axes: list[np.ndarray]) -> np.ndarray:
    """Trilinearly sample ``coarse`` on the outer product of ``axes``.

    Interpolating one axis at a time keeps the cost proportional to the
    output size instead of building a full coordinate array for
    ``map_coordinates``.
    """
    result = coarse
    for axis, coords in enumerate(axes):
        lower = np.clip(np.floor(coords).astype(np.intp), 0, coarse.shape[axis] - 2)
        frac = (coords - lower).astype(np.float32)
        shape = [1] * result.ndim
        shape[axis] = -1
        frac = frac.reshape(shape)
        a = np.take(result, lower, axis=axis).astype(np.float32)
        b = np.take(result, lower + 1, axis=axis).astype(np.float32)
        result = a + (b - a) * frac
    return result


def _nearest_seed_labels(
    shape: Shape3,
    spacing: np.ndarray,
    stretch: np.ndarray,
    displacement: np.ndarray,
    seeds: np.ndarray,
) -> np.ndarray:
    """Assign each voxel the 1-based index of its nearest (warped) seed.

    Work proceeds in slabs along axis 0 to bound temporary memory.
    """
    tree = cKDTree(seeds)
    labels = np.empty(shape, dtype=np.int64)
    plane = shape[1] * shape[2]
    slab = max(1, _QUERY_CHUNK_VOXELS // plane)
    yy, xx = np.meshgrid(
        (np.arange(shape[1]) + 0.5) * spacing[1],
        (np.arange(shape[2]) + 0.5) * spacing[2],
        indexing="ij",
    )
    for z0 in range(0, shape[0], slab):
        z1 = min(shape[0], z0 + slab)
        zz = (np.arange(z0, z1) + 0.5) * spacing[0]
        points = np.empty((z1 - z0, shape[1], shape[2], 3), dtype=np.float64)
        points[..., 0] = zz[:, None, None] + displacement[0, z0:z1]
        points[..., 1] = yy + displacement[1, z0:z1]
        points[..., 2] = xx + displacement[2, z0:z1]
        points /= stretch
        _, index = tree.query(points.reshape(-1, 3), k=1, workers=1)
        labels[z0:z1] = index.reshape(z1 - z0, shape[1], shape[2]) + 1
    return labels


def _make_contiguous(labels: np.ndarray, min_size: int = 0) -> np.ndarray:
    """Make every id one 6-connected component with consecutive ids.

    The largest component of each id is kept if it has at least
    ``min_size`` voxels; smaller detached fragments and tiny objects
    (slivers produced by warping, discretisation and cropping) are grown
    over by their neighbours, which keeps every grown voxel attached to the
    object it joins. A final connected-component relabelling guarantees
    contiguity and consecutive ids even if growth did not finish.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer labels without background (no zeros).
    min_size : int, optional
        Smallest component, in voxels, kept as an object of its own.

    Returns
    -------
    numpy.ndarray
        ``uint64`` labels ``1..N``.
    """
    components = connected_components(labels, background=0, connectivity=1)
    n_components = int(components.max())
    if n_components > 0:
        keep = _largest_component_mask(labels, components, n_components, min_size)
        # With nothing left to grow from (tiny volumes) keep the labels as
        # they are; the relabelling below still splits fragments.
        if keep.any() and not keep.all():
            labels = _grow_into(labels, keep)
    relabelled = connected_components(labels, background=0, connectivity=1)
    return relabelled.astype(np.uint64, copy=False)


def _largest_component_mask(
    labels: np.ndarray, components: np.ndarray, n_components: int, min_size: int
) -> np.ndarray:
    """Mask voxels in the largest component of their id, if not too small."""
    sizes = np.bincount(components.ravel(), minlength=n_components + 1)
    owner = np.zeros(n_components + 1, dtype=labels.dtype)
    owner[components.ravel()] = labels.ravel()
    ids = np.arange(1, n_components + 1)
    # Sort by owner, then by size descending: the first entry of each owner
    # run is its largest component.
    order = np.lexsort((-sizes[ids], owner[ids]))
    first = np.ones(order.size, dtype=bool)
    first[1:] = owner[ids][order][1:] != owner[ids][order][:-1]
    is_largest = np.zeros(n_components + 1, dtype=bool)
    is_largest[ids[order][first]] = True
    is_largest &= sizes >= min_size
    return is_largest[components]


def _grow_into(labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Fill voxels outside ``keep`` from 6-neighbours that are kept.

    Voxels still unfilled after ``_MAX_FILL_ITERATIONS`` keep their
    original id; the caller's relabelling turns them into own objects.
    """
    labels = labels.copy()
    filled = keep.copy()
    for _ in range(_MAX_FILL_ITERATIONS):
        if filled.all():
            break
        for axis in range(3):
            for step in (1, -1):
                _take_from_neighbour(labels, filled, axis, step)
    return labels


def _take_from_neighbour(
    labels: np.ndarray, filled: np.ndarray, axis: int, step: int
) -> None:
    """Copy labels into unfilled voxels whose neighbour at ``step`` is filled."""
    n = labels.shape[axis]
    if n < 2:
        return
    here = [slice(None)] * 3
    there = [slice(None)] * 3
    if step == 1:
        here[axis], there[axis] = slice(0, n - 1), slice(1, n)
    else:
        here[axis], there[axis] = slice(1, n), slice(0, n - 1)
    h, t = tuple(here), tuple(there)
    take = ~filled[h] & filled[t]
    labels[h][take] = labels[t][take]
    filled[h] |= take
