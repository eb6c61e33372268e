"""Post-processing of instance labels: small objects, large blobs, circularity, Voronoi growth.

The optional steps after the channel watershed of
:mod:`workers.channel_instances`, each a function of its own:
:func:`remove_small_instances`, :func:`repair_large_blobs`,
:func:`filter_by_circularity` (with :func:`circularity`) and
:func:`voronoi_growth`.

Examples
--------
>>> import numpy as np
>>> remove_small_instances(np.array([[1, 1, 0, 2]]), 2).tolist()
[[1, 1, 0, 0]]
"""

from __future__ import annotations

import math
from typing import Sequence

import fastremap
import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.measure import marching_cubes, mesh_surface_area, perimeter

from workers.channel_params import _is_int, _is_real
from workers.channels import check_voxel_size


def _check_labels(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer) or labels.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2D or 3D integer array, got dtype {labels.dtype} and shape {labels.shape}")
    if np.issubdtype(labels.dtype, np.signedinteger) and labels.size and labels.min() < 0:
        raise ValueError(f"{name} must be >= 0 (0 is background), got minimum {labels.min()}")
    return labels


def remove_small_instances(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Set instances of fewer than ``min_size`` voxels to 0 (a new array).

    Examples
    --------
    >>> remove_small_instances(np.array([[1, 1, 2], [0, 3, 3]]), 2).tolist()
    [[1, 1, 0], [0, 3, 3]]
    """
    labels = _check_labels(labels)
    if not _is_int(min_size) or min_size < 0:
        raise ValueError(f"min_size must be an integer >= 0 (voxels), got {min_size!r}")
    dense, _ = fastremap.renumber(np.ascontiguousarray(labels), preserve_zero=True, in_place=False)
    sizes = np.bincount(dense.ravel())
    small = sizes < min_size
    small[0] = False
    out = labels.copy()
    out[small[dense]] = 0
    return out


def _touching_pairs(dense: np.ndarray) -> np.ndarray:
    """Unique pairs (a, b), a < b, of non-zero labels that share a face."""
    pairs = []
    for axis in range(dense.ndim):
        lower = dense[(slice(None),) * axis + (slice(None, -1),)]
        upper = dense[(slice(None),) * axis + (slice(1, None),)]
        differ = (lower != upper) & (lower != 0) & (upper != 0)
        a, b = lower[differ], upper[differ]
        pairs.append(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1))
    if not pairs:
        return np.zeros((0, 2), np.int64)
    return np.unique(np.concatenate(pairs).astype(np.int64), axis=0)


def repair_large_blobs(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Merge each large instance with the instances it touches, and fill its holes.

    A large object whose prediction has several seeds (typical of ``BP``,
    where a big object may get more than one central point) comes out of
    the watershed in pieces; the pieces of it that reach ``min_size`` voxels
    absorb every instance sharing a face with them (transitively through
    other large instances), and the merged instance then fills its holes:
    voxels it encloses completely become part of it, whatever they held.

    Parameters
    ----------
    labels : ndarray of int
        2D or 3D instances, 0 is background.
    min_size : int
        Instances with at least this many voxels are repaired (>= 1).

    Returns
    -------
    ndarray, the dtype of ``labels``
        Merged instances keep the smallest of their ids; others keep theirs.

    Examples
    --------
    >>> ring = np.zeros((7, 7), np.uint8)
    >>> ring[1:6, 1:6] = 1
    >>> ring[2:5, 2:5] = 0
    >>> ring[3, 3] = 2                       # a piece inside the hole
    >>> ring[1, 1:3] = 3                     # a piece on the rim
    >>> repair_large_blobs(ring, 10)[1:6, 1:6].tolist() == [[1] * 5] * 5
    True
    """
    labels = _check_labels(labels)
    if not _is_int(min_size) or min_size < 1:
        raise ValueError(f"min_size must be an integer >= 1 (voxels), got {min_size!r}")
    dense, mapping = fastremap.renumber(np.ascontiguousarray(labels), preserve_zero=True, in_place=False)
    count = int(dense.max(initial=0))
    sizes = np.bincount(dense.ravel(), minlength=count + 1)
    large = sizes >= min_size
    large[0] = False
    if not large.any():
        return labels.copy()
    pairs = _touching_pairs(dense)
    pairs = pairs[large[pairs[:, 0]] | large[pairs[:, 1]]]
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(count + 1, count + 1))
    _, component = connected_components(graph, directed=False)
    # Each group is named after its smallest original id, so the result does
    # not depend on how the groups happen to be numbered.
    original = np.zeros(count + 1, labels.dtype)
    for old, new in mapping.items():
        original[new] = old
    group_id = np.full(component.max() + 1, np.iinfo(labels.dtype).max, labels.dtype)
    np.minimum.at(group_id, component[1:], original[1:])
    merged = np.where(dense == 0, 0, group_id[component[dense]]).astype(labels.dtype)
    grown = np.zeros(component.max() + 1, bool)
    grown[component[large]] = True
    _fill_holes_of(merged, np.unique(group_id[grown]))
    return merged


def _fill_holes_of(labels: np.ndarray, ids: np.ndarray) -> None:
    """Fill, in place, the holes of the instances ``ids`` (few: the large ones)."""
    dense, mapping = fastremap.renumber(np.ascontiguousarray(labels), preserve_zero=True, in_place=False)
    boxes = ndi.find_objects(dense)
    for label_id in ids:
        index = mapping[int(label_id)]
        box = boxes[index - 1]
        filled = ndi.binary_fill_holes(dense[box] == index)
        labels[box][filled] = label_id


def _padded(mask: np.ndarray) -> np.ndarray:
    return np.pad(mask, 1)


def circularity(mask: np.ndarray, voxel_size: Sequence[float] | None = None) -> float:
    """Circularity of a 2D mask, or sphericity of a 3D one, in [0, 1].

    2D: ``4 pi area / perimeter**2`` with scikit-image's perimeter estimate
    (4-connected boundary, weighted by the local configuration), in voxels:
    that estimate has no voxel size, so ``voxel_size`` only acts in 3D.
    It counts a one-voxel-wide line's length once, not twice, so such lines
    score higher than their shape deserves (0.39 for a line of 36 voxels).
    3D: ``pi**(1/3) (6 V)**(2/3) / A``, with the surface area ``A`` of the
    marching-cubes mesh at level 0.5 (world units if ``voxel_size`` is given).
    Both are 1 for a perfect disc or ball; digitisation can push the
    estimate slightly above 1, so it is capped there.

    Examples
    --------
    >>> yy, xx = np.mgrid[-12:13, -12:13]
    >>> circularity(yy**2 + xx**2 <= 100) > 0.85
    True
    >>> line = np.zeros((5, 40), bool); line[1:3, 2:38] = True     # 2 x 36
    >>> circularity(line) < 0.2
    True
    """
    mask = np.asarray(mask, bool)
    if mask.ndim not in (2, 3) or not mask.any():
        raise ValueError(f"circularity needs a non-empty 2D or 3D mask, got shape {mask.shape}")
    spacing = check_voxel_size(voxel_size, mask.ndim)
    if mask.ndim == 2:
        length = perimeter(_padded(mask), neighborhood=4)
        value = 4 * math.pi * mask.sum() / length**2 if length > 0 else 1.0
    else:
        padded = _padded(mask).astype(np.float32)
        verts, faces, _, _ = marching_cubes(padded, level=0.5, spacing=spacing)
        area = mesh_surface_area(verts, faces)
        volume = mask.sum() * math.prod(spacing)
        value = math.pi ** (1 / 3) * (6 * volume) ** (2 / 3) / area if area > 0 else 1.0
    return float(min(value, 1.0))


def filter_by_circularity(
    labels: np.ndarray, min_circularity: float, voxel_size: Sequence[float] | None = None
) -> np.ndarray:
    """Remove (set to 0) the instances whose :func:`circularity` is below ``min_circularity``.

    One measurement per instance, each on the instance's bounding box, so
    the cost grows with the volume, not with the number of instances times
    the volume.

    Examples
    --------
    >>> labels = np.zeros((30, 60), np.uint8)
    >>> yy, xx = np.mgrid[:30, :60]
    >>> labels[(yy - 15)**2 + (xx - 15)**2 <= 100] = 1     # a disc
    >>> labels[15, 35:58] = 2                               # a line
    >>> np.unique(filter_by_circularity(labels, 0.7)).tolist()
    [0, 1]
    """
    labels = _check_labels(labels)
    if not _is_real(min_circularity) or not 0.0 <= min_circularity <= 1.0:
        raise ValueError(f"min_circularity must lie in [0, 1], got {min_circularity!r}")
    dense, _ = fastremap.renumber(np.ascontiguousarray(labels), preserve_zero=True, in_place=False)
    drop = np.zeros(int(dense.max(initial=0)) + 1, bool)
    for index, box in enumerate(ndi.find_objects(dense), start=1):
        if box is not None:
            drop[index] = circularity(dense[box] == index, voxel_size) < min_circularity
    out = labels.copy()
    out[drop[dense]] = 0
    return out


def voronoi_growth(labels: np.ndarray, mask: np.ndarray, voxel_size: Sequence[float] | None = None) -> np.ndarray:
    """Give each unlabelled voxel of ``mask`` the label of the nearest labelled voxel.

    This is the Voronoi tessellation of the instances (Euclidean distance,
    world units if ``voxel_size`` is given), cut to the mask, so that
    instances grow until they touch each other or the mask's edge. Labelled
    voxels keep their labels, inside the mask or not; with no instance at
    all, nothing changes.

    Examples
    --------
    >>> labels = np.array([[1, 0, 0, 0, 2, 0]])
    >>> mask = np.array([[1, 1, 1, 1, 1, 0]], bool)
    >>> voronoi_growth(labels, mask).tolist()
    [[1, 1, 1, 2, 2, 0]]
    """
    labels = _check_labels(labels)
    mask = np.asarray(mask)
    if mask.shape != labels.shape:
        raise ValueError(f"mask shape {mask.shape} differs from labels shape {labels.shape}")
    spacing = check_voxel_size(voxel_size, labels.ndim)
    unlabelled = labels == 0
    if unlabelled.all() or not unlabelled.any():
        return labels.copy()
    nearest = ndi.distance_transform_edt(unlabelled, sampling=spacing, return_distances=False, return_indices=True)
    grown = labels[tuple(nearest)]
    return np.where(unlabelled & ~mask.astype(bool), 0, grown).astype(labels.dtype, copy=False)
