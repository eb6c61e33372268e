"""Pixel embeddings to colour views, affinities and instances, on one block.

A network trained with a discriminative (push/pull) loss maps every pixel to
a vector so that pixels of one object lie close together and pixels of
different objects at least ``2 * delta`` apart. Embeddings here are arrays
shaped ``(E, *spatial)`` with 2D or 3D spatial axes. This module turns them
into

- colour views: PCA to ``n`` components (:func:`embedding_pca`), a PCA fitted
  on a sample and applied block by block (:func:`fit_embedding_pca`,
  :func:`apply_embedding_pca`), and micro_sam's view of image-encoder grids
  (:func:`image_embedding_view`, :func:`tiled_embedding_view`);
- affinities for a list of offsets (:func:`embeddings_to_affinities`) and
  boundary probabilities of RAG edges from segment means
  (:func:`edge_probabilities_from_embeddings`);
- instances: mean shift, HDBSCAN and consistency clustering (scikit-learn's
  estimators), and the mutex watershed on embedding distances
  (:func:`segment_embeddings_mws`, over :func:`workers.mutex.mutex_watershed`).

Every function checks its input (NaN, shapes, parameter ranges) and raises
``ValueError`` saying what is wrong. Instance labels are uint64, ``1..n``
numbered by first pixel in C order, 0 for background.

Examples
--------
>>> import numpy as np
>>> embeddings = np.zeros((2, 1, 4), np.float32)
>>> embeddings[0, 0, 2:] = 5.0          # two objects: x < 2 and x >= 2
>>> embeddings_to_affinities(embeddings, [[0, 1]], delta=1.0).round(3).tolist()
[[[1.0, 0.0, 1.0, 0.0]]]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import fastremap
import numpy as np
from skimage.transform import resize

from workers.mutex import check_offsets, mutex_watershed, neighbour_slices

__all__ = [
    "DISTANCE_TYPES",
    "EmbeddingPca",
    "fit_embedding_pca",
    "apply_embedding_pca",
    "embedding_pca",
    "image_embedding_view",
    "tiled_embedding_view",
    "embedding_distances",
    "push_dissimilarity",
    "embeddings_to_affinities",
    "segment_adjacency",
    "segment_mean_embeddings",
    "edge_probabilities_from_embeddings",
    "segment_mean_shift",
    "segment_hdbscan",
    "segment_consistency",
    "segment_embeddings_mws",
]

DISTANCE_TYPES = ("l2", "cosine", "l1")

# Percentiles of the sample projections that map to 0 and 1 in
# fit_embedding_pca: a few outlier pixels must not wash out the colours of a
# whole volume, which plain min/max would let them do.
_PREVIEW_PERCENTILES = (1.0, 99.0)

# Rows per chunk when accumulating the covariance, so a block of millions of
# pixels never needs a centred float64 copy of itself.
_COVARIANCE_CHUNK = 1 << 20


# ----------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------


def _check_embeddings(embeddings: np.ndarray, name: str = "embeddings", spatial_dims: Sequence[int] = (2, 3)) -> np.ndarray:
    embeddings = np.asarray(embeddings)
    if not np.issubdtype(embeddings.dtype, np.number) or np.issubdtype(embeddings.dtype, np.complexfloating):
        raise ValueError(f"{name} must be real numbers; got dtype {embeddings.dtype}")
    if embeddings.ndim - 1 not in spatial_dims:
        allowed = " or ".join(f"{d}D" for d in spatial_dims)
        raise ValueError(
            f"{name} must be shaped (E, *spatial) with {allowed} spatial axes; got shape {embeddings.shape}"
        )
    if embeddings.shape[0] < 1 or embeddings.size == 0:
        raise ValueError(f"{name} must have at least one channel and one pixel; got shape {embeddings.shape}")
    if not np.all(np.isfinite(embeddings)):
        raise ValueError(f"{name} contain NaN or infinite values; only finite values are allowed")
    return embeddings


def _check_positive(value: float, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a positive number; got {value!r}") from error
    if not np.isfinite(number) or number <= 0:
        raise ValueError(f"{name} must be a positive finite number; got {value!r}")
    return number


def _check_probability(value: float, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a number in [0, 1]; got {value!r}") from error
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1]; got {value!r}")
    return number


def _check_mask(mask: np.ndarray | None, spatial: tuple[int, ...], name: str = "mask") -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.shape != spatial:
        raise ValueError(f"{name} must have the spatial shape {spatial}; got {mask.shape}")
    return mask.astype(bool, copy=False)


def _check_n_components(n_components: int, n_features: int) -> int:
    if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)) or n_components < 1:
        raise ValueError(f"n_components must be a positive integer; got {n_components!r}")
    if n_components > n_features:
        raise ValueError(f"n_components ({n_components}) cannot exceed the embedding dimension ({n_features})")
    return int(n_components)


def _number_by_first_pixel(labels: np.ndarray) -> np.ndarray:
    """Renumber to ``1..n`` in order of first pixel (C order), keeping 0."""
    labels = np.ascontiguousarray(labels, dtype=np.uint64)
    renumbered, _ = fastremap.renumber(labels, start=1, preserve_zero=True, in_place=False)
    return renumbered.astype(np.uint64, copy=False)


# ----------------------------------------------------------------------------
# PCA views
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddingPca:
    """A PCA of embedding vectors plus the range that maps each component to [0, 1].

    Attributes
    ----------
    mean : ndarray, shape (E,)
        Mean of the fitted samples.
    components : ndarray, shape (n, E)
        Unit principal axes, strongest first, each signed so that its
        largest-magnitude loading is positive (two fits of the same data
        agree, whatever the solver's sign).
    low, high : ndarray, shape (n,)
        Projections at or below ``low`` map to 0, at or above ``high`` to 1.
    """

    mean: np.ndarray
    components: np.ndarray
    low: np.ndarray
    high: np.ndarray


def _principal_axes(samples: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sign-fixed principal axes of ``samples`` (N, E), in float64."""
    n_samples, n_features = samples.shape
    mean = np.zeros(n_features, dtype=np.float64)
    for start in range(0, n_samples, _COVARIANCE_CHUNK):
        mean += samples[start : start + _COVARIANCE_CHUNK].sum(axis=0, dtype=np.float64)
    mean /= n_samples
    scatter = np.zeros((n_features, n_features), dtype=np.float64)
    for start in range(0, n_samples, _COVARIANCE_CHUNK):
        centred = samples[start : start + _COVARIANCE_CHUNK].astype(np.float64) - mean
        scatter += centred.T @ centred
    # E is small (tens of channels), so an eigendecomposition of the E x E
    # scatter matrix is exact and cheaper than an SVD of the N x E data.
    eigenvalues, eigenvectors = np.linalg.eigh(scatter)
    order = np.argsort(eigenvalues)[::-1][:n_components]
    components = eigenvectors[:, order].T
    strongest = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(len(components)), strongest])
    signs[signs == 0] = 1.0
    return mean, components * signs[:, None]


def _project(embeddings: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """(n, *spatial) projections of (E, *spatial) embeddings onto ``components``."""
    n_features = embeddings.shape[0]
    flat = embeddings.reshape(n_features, -1)
    # float32 embeddings are projected in float32: a preview block of 4
    # Mvoxel x 16 channels would otherwise need a 0.5 GB float64 copy, for
    # colours that end up as 8-bit values.
    dtype = np.float32 if flat.dtype == np.float32 else np.float64
    projected = components.astype(dtype) @ flat.astype(dtype, copy=False)
    projected -= (components @ mean).astype(dtype)[:, None]
    return projected.reshape((len(components),) + embeddings.shape[1:])


def _scale(projected: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Map each component from [low, high] to [0, 1], clipped; a constant component maps to 0."""
    shape = (-1,) + (1,) * (projected.ndim - 1)
    span = (high - low).reshape(shape)
    safe = np.where(span > 0, span, 1.0)
    scaled = np.where(span > 0, (projected - low.reshape(shape)) / safe, 0.0)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def fit_embedding_pca(samples: np.ndarray, n_components: int = 3) -> EmbeddingPca:
    """Fit a PCA on sampled embedding vectors, for views that agree across blocks.

    ``low`` and ``high`` are the 1st and 99th percentiles of the samples'
    projections on each component (robust to a few outlier pixels).

    Parameters
    ----------
    samples : ndarray, shape (N, E)
        Embedding vectors, e.g. pixels drawn at random from a whole volume.
        At least 2, all finite.
    n_components : int
        Number of components to keep (at most E).

    Returns
    -------
    EmbeddingPca

    Examples
    --------
    >>> import numpy as np
    >>> samples = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    >>> model = fit_embedding_pca(samples, n_components=1)
    >>> model.components.tolist(), model.mean.tolist()
    ([[1.0, 0.0]], [1.5, 0.0])
    """
    samples = np.asarray(samples)
    if samples.ndim != 2:
        raise ValueError(f"samples must be shaped (N, E), one embedding vector per row; got shape {samples.shape}")
    if samples.shape[0] < 2:
        raise ValueError(f"need at least 2 samples to fit a PCA; got {samples.shape[0]}")
    if not np.issubdtype(samples.dtype, np.number) or not np.all(np.isfinite(samples)):
        raise ValueError("samples contain NaN or infinite values (or are not numbers); only finite values are allowed")
    n_components = _check_n_components(n_components, samples.shape[1])
    mean, components = _principal_axes(samples, n_components)
    projected = (samples.astype(np.float64) - mean) @ components.T
    low, high = np.percentile(projected, _PREVIEW_PERCENTILES, axis=0)
    return EmbeddingPca(mean=mean, components=components, low=low, high=high)


def apply_embedding_pca(embeddings: np.ndarray, model: EmbeddingPca) -> np.ndarray:
    """Project embeddings with a fitted PCA and scale each component to [0, 1].

    Parameters
    ----------
    embeddings : ndarray, shape (E, *spatial)
        2D or 3D; E must match the model.
    model : EmbeddingPca
        From :func:`fit_embedding_pca`.

    Returns
    -------
    ndarray of float32, shape (n, *spatial)
        ``(projection - low) / (high - low)`` clipped to [0, 1]; 0 for a
        component with ``high == low``.

    Examples
    --------
    >>> import numpy as np
    >>> model = fit_embedding_pca(np.array([[0.0, 0.0], [4.0, 0.0]]), n_components=1)
    >>> apply_embedding_pca(np.array([[[0.0, 2.0, 4.0]], [[0.0, 0.0, 0.0]]]), model).round(3).tolist()
    [[[0.0, 0.5, 1.0]]]
    """
    embeddings = _check_embeddings(embeddings)
    if embeddings.shape[0] != model.mean.shape[0]:
        raise ValueError(
            f"embeddings have {embeddings.shape[0]} channels but the PCA was fitted on {model.mean.shape[0]}"
        )
    projected = _project(embeddings, np.asarray(model.mean), np.asarray(model.components))
    return _scale(projected, np.asarray(model.low, np.float64), np.asarray(model.high, np.float64))


def embedding_pca(embeddings: np.ndarray, n_components: int = 3, as_rgb: bool = False) -> np.ndarray:
    """PCA of the pixel embeddings of one image or volume.

    Parameters
    ----------
    embeddings : ndarray, shape (E, *spatial)
        2D or 3D.
    n_components : int
        Number of components (at most E).
    as_rgb : bool
        Scale each component by its own min and max to [0, 1] (e.g. three
        components as an RGB image). Otherwise return the raw projections
        (centred; components signed as in :class:`EmbeddingPca`).

    Returns
    -------
    ndarray of float32, shape (n_components, *spatial)

    Examples
    --------
    >>> import numpy as np
    >>> embeddings = np.array([[[0.0, 1.0, 2.0]], [[0.0, 1.0, 2.0]]])
    >>> embedding_pca(embeddings, n_components=1, as_rgb=True).tolist()
    [[[0.0, 0.5, 1.0]]]
    """
    embeddings = _check_embeddings(embeddings)
    n_components = _check_n_components(n_components, embeddings.shape[0])
    if embeddings[0].size < 2:
        raise ValueError("need at least 2 pixels to compute a PCA")
    samples = embeddings.reshape(embeddings.shape[0], -1).T
    mean, components = _principal_axes(samples, n_components)
    projected = _project(embeddings, mean, components)
    if not as_rgb:
        return projected.astype(np.float32)
    flat = projected.reshape(n_components, -1)
    return _scale(projected, flat.min(axis=1), flat.max(axis=1))


def _aspect_crop(grid_shape: Sequence[int], image_shape: Sequence[int]) -> tuple[int, int]:
    """Rows and columns of an encoder grid that cover an image (micro_sam's crop).

    Encoders such as SAM's resize an image so its longer side fills the input
    and pad the shorter side at the end; the grid's leading cells along the
    shorter side, ``floor(aspect * cells)``, hold the image.
    """
    rows, cols = int(grid_shape[0]), int(grid_shape[1])
    height, width = int(image_shape[0]), int(image_shape[1])
    if height > width:
        cols = max(1, int(width / height * cols))
    elif width > height:
        rows = max(1, int(height / width * rows))
    return rows, cols


def _resize(array: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """Resize the trailing axes of ``array`` to ``shape`` (skimage, edge mode, no anti-aliasing)."""
    target = tuple(array.shape[: array.ndim - len(shape)]) + tuple(int(s) for s in shape)
    if target == array.shape:
        return array
    return resize(array, target, order=order, mode="edge", anti_aliasing=False, preserve_range=True)


def _check_grid_args(image_shape: Sequence[int], n_components: int, order: int) -> tuple[int, ...]:
    try:
        image_shape = tuple(int(s) for s in image_shape)
    except (TypeError, ValueError) as error:
        raise ValueError(f"image_shape must be a tuple of positive integers; got {image_shape!r}") from error
    if any(s < 1 for s in image_shape):
        raise ValueError(f"image_shape must be positive; got {image_shape}")
    if order not in (0, 1, 3):
        raise ValueError(f"order must be 0 (nearest), 1 (linear) or 3 (cubic); got {order!r}")
    return image_shape


def _grid_view(grid: np.ndarray, image_shape: tuple[int, int], n_components: int, as_rgb: bool, order: int) -> np.ndarray:
    """PCA of an already cropped (E, h, w) grid, resized to the image."""
    vis = embedding_pca(grid, n_components=n_components, as_rgb=as_rgb)
    return _resize(vis, image_shape, order).astype(np.float32)


def image_embedding_view(
    embeddings: np.ndarray,
    image_shape: Sequence[int],
    *,
    n_components: int = 3,
    as_rgb: bool = True,
    per_slice: bool = True,
    order: int = 1,
) -> np.ndarray:
    """micro_sam's PCA view of an image encoder's embedding grid, at image size.

    The grid of an encoder that fits the image's longer side and pads the
    shorter one is cropped to the image's aspect ratio, projected by PCA and
    resized to the image. Unlike micro_sam the crop comes before the PCA, so
    padding cells do not shape the colours (and the view of a tiled embedding
    can equal the untiled one, see :func:`tiled_embedding_view`).

    Parameters
    ----------
    embeddings : ndarray
        ``(E, h, w)`` for one image, or ``(E, Z, h, w)`` for a stack (one
        grid per slice).
    image_shape : tuple of int
        ``(H, W)`` for one image, ``(Z, H, W)`` for a stack.
    n_components : int
        Components of the PCA (3 for an RGB view).
    as_rgb : bool
        Scale each component to [0, 1] by its min and max.
    per_slice : bool
        For a stack: one PCA per slice, as micro_sam does (True), or one PCA
        over all slices so that colours compare between slices (False).
    order : int
        Spline order of the resize: 0 nearest, 1 linear, 3 cubic.

    Returns
    -------
    ndarray of float32
        ``(n_components, H, W)`` or ``(n_components, Z, H, W)``.

    Examples
    --------
    >>> import numpy as np
    >>> grid = np.zeros((1, 2, 2))
    >>> grid[0, :, 1] = 1.0   # right column differs; bottom row is padding for a 2:1 image
    >>> image_embedding_view(grid, (2, 4), n_components=1, order=0).tolist()
    [[[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]]
    """
    embeddings = _check_embeddings(embeddings, spatial_dims=(2, 3))
    image_shape = _check_grid_args(image_shape, n_components, order)
    if len(image_shape) != embeddings.ndim - 1:
        raise ValueError(
            f"image_shape {image_shape} must have one entry per spatial axis of the embeddings {embeddings.shape[1:]}"
        )
    if embeddings.ndim == 3:
        rows, cols = _aspect_crop(embeddings.shape[1:], image_shape)
        return _grid_view(embeddings[:, :rows, :cols], image_shape, n_components, as_rgb, order)
    if embeddings.shape[1] != image_shape[0]:
        raise ValueError(f"the stack has {image_shape[0]} slices but the embeddings {embeddings.shape[1]}")
    rows, cols = _aspect_crop(embeddings.shape[2:], image_shape[1:])
    cropped = embeddings[:, :, :rows, :cols]
    if per_slice:
        views = [_grid_view(cropped[:, z], image_shape[1:], n_components, as_rgb, order) for z in range(image_shape[0])]
        return np.stack(views, axis=1)
    vis = embedding_pca(cropped, n_components=n_components, as_rgb=as_rgb)
    return _resize(vis, image_shape[1:], order).astype(np.float32)


def _tiles(image_shape: tuple[int, int], tile_shape: tuple[int, int], halo: tuple[int, int]):
    """Inner and outer (halo-grown, clipped) boxes of a C-order tiling, as ((begin, end) per axis) pairs."""
    counts = [-(-n // t) for n, t in zip(image_shape, tile_shape)]
    for index in np.ndindex(*counts):
        inner = [(i * t, min((i + 1) * t, n)) for i, t, n in zip(index, tile_shape, image_shape)]
        outer = [(max(b - h, 0), min(e + h, n)) for (b, e), h, n in zip(inner, halo, image_shape)]
        yield index, inner, outer


def tiled_embedding_view(
    tiles: Sequence[np.ndarray],
    image_shape: Sequence[int],
    tile_shape: Sequence[int],
    halo: Sequence[int],
    *,
    n_components: int = 3,
    as_rgb: bool = True,
    order: int = 1,
) -> np.ndarray:
    """micro_sam's PCA view of an image embedded tile by tile (tiles with halo).

    The image is cut into ``tile_shape`` tiles in C order; tile ``k`` was
    embedded from its tile grown by ``halo`` on every side (clipped to the
    image), as an encoder grid that fits that region's longer side. From
    each grid the cells of the inner tile are kept (after the aspect crop,
    boxes scaled and rounded to cells); the pieces are stitched in grid space
    (pieces of one tile row resized to a common height, rows to a common
    width when their cell sizes differ), and one PCA of the stitched grid,
    resized to the image, gives colours that agree across tiles. With enough
    halo the inner cells are what an untiled encoder would have produced, and
    the view equals :func:`image_embedding_view` of the untiled grid.

    Parameters
    ----------
    tiles : sequence of ndarray, each (E, h, w)
        Encoder grid of each tile, in C order of the tile grid.
    image_shape, tile_shape, halo : (int, int)
        Image size, inner tile size and halo, in pixels.
    n_components, as_rgb, order
        As in :func:`image_embedding_view`.

    Returns
    -------
    ndarray of float32, shape (n_components, H, W)

    Examples
    --------
    >>> import numpy as np
    >>> left, right = np.zeros((1, 1, 1)), np.ones((1, 1, 1))
    >>> tiled_embedding_view([left, right], (2, 4), (2, 2), (0, 0), n_components=1, order=0).tolist()
    [[[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]]
    """
    image_shape = _check_grid_args(image_shape, n_components, order)
    if len(image_shape) != 2:
        raise ValueError(f"tiled views are 2D: image_shape must be (H, W); got {image_shape}")
    try:
        tile_shape = tuple(int(t) for t in tile_shape)
        halo = tuple(int(h) for h in halo)
    except (TypeError, ValueError) as error:
        raise ValueError(f"tile_shape and halo must be two integers each; got {tile_shape!r}, {halo!r}") from error
    if len(tile_shape) != 2 or any(t < 1 for t in tile_shape):
        raise ValueError(f"tile_shape must be two positive integers; got {tile_shape}")
    if len(halo) != 2 or any(h < 0 for h in halo):
        raise ValueError(f"halo must be two non-negative integers; got {halo}")
    layout = list(_tiles(image_shape, tile_shape, halo))
    if len(tiles) != len(layout):
        raise ValueError(f"an image of {image_shape} in tiles of {tile_shape} needs {len(layout)} tiles; got {len(tiles)}")

    pieces: dict[tuple[int, ...], np.ndarray] = {}
    n_features = None
    for (index, inner, outer), grid in zip(layout, tiles):
        grid = _check_embeddings(grid, name=f"tile {index}", spatial_dims=(2,))
        if n_features is None:
            n_features = grid.shape[0]
        elif grid.shape[0] != n_features:
            raise ValueError(f"all tiles need the same number of channels; tile {index} has {grid.shape[0]}, not {n_features}")
        outer_shape = [e - b for b, e in outer]
        rows, cols = _aspect_crop(grid.shape[1:], outer_shape)
        cells = (rows, cols)
        box = []
        for (inner_begin, inner_end), (outer_begin, _), count, length in zip(inner, outer, cells, outer_shape):
            scale = count / length
            begin = int(np.round((inner_begin - outer_begin) * scale))
            end = max(int(np.round((inner_end - outer_begin) * scale)), begin + 1)
            box.append(slice(begin, min(end, count)))
        pieces[index] = grid[:, : rows, : cols][(slice(None),) + tuple(box)]

    counts = [-(-n // t) for n, t in zip(image_shape, tile_shape)]
    strips = []
    for i in range(counts[0]):
        row = [pieces[(i, j)] for j in range(counts[1])]
        height = max(p.shape[1] for p in row)
        strips.append(np.concatenate([_resize(p, (height, p.shape[2]), order) for p in row], axis=2))
    width = max(s.shape[2] for s in strips)
    stitched = np.concatenate([_resize(s, (s.shape[1], width), order) for s in strips], axis=1)
    return _grid_view(stitched, image_shape, n_components, as_rgb, order)


# ----------------------------------------------------------------------------
# distances, affinities, edge probabilities
# ----------------------------------------------------------------------------


def _distance(a: np.ndarray, b: np.ndarray, distance_type: str) -> np.ndarray:
    """Distance along axis 0 between two (E, ...) arrays."""
    if distance_type == "l2":
        return np.sqrt(np.sum((a - b) ** 2, axis=0))
    if distance_type == "l1":
        return np.sum(np.abs(a - b), axis=0)
    dot = np.sum(a * b, axis=0)
    norms = np.sqrt(np.sum(a * a, axis=0) * np.sum(b * b, axis=0))
    # A zero vector has no direction: call it unrelated (similarity 0).
    similarity = np.divide(dot, norms, out=np.zeros_like(dot), where=norms > 0)
    return 1.0 - similarity


def _check_distance_type(distance_type: str) -> str:
    if distance_type not in DISTANCE_TYPES:
        raise ValueError(f"unknown distance_type {distance_type!r}; allowed: {', '.join(DISTANCE_TYPES)}")
    return distance_type


def embedding_distances(
    embeddings: np.ndarray, offsets: Sequence[Sequence[int]], distance_type: str = "l2"
) -> tuple[np.ndarray, np.ndarray]:
    """Distance between each pixel's embedding and its neighbour's, per offset.

    Parameters
    ----------
    embeddings : ndarray, shape (E, *spatial)
    offsets : sequence of sequence of int
        Channel ``c`` compares pixel ``p`` with ``p + offsets[c]``.
    distance_type : {"l2", "cosine", "l1"}
        Euclidean, ``1 - cosine similarity`` (a zero vector has similarity 0
        with everything), or Manhattan.

    Returns
    -------
    distances : ndarray of float32, shape (len(offsets), *spatial)
        0 where the neighbour is outside the array.
    valid : ndarray of bool, same shape
        Where the neighbour is inside.

    Examples
    --------
    >>> import numpy as np
    >>> d, valid = embedding_distances(np.array([[[0.0, 3.0]], [[0.0, 4.0]]]), [[0, 1]])
    >>> d.tolist(), valid.tolist()
    ([[[5.0, 0.0]]], [[[True, False]]])
    """
    embeddings = _check_embeddings(embeddings)
    distance_type = _check_distance_type(distance_type)
    spatial = embeddings.shape[1:]
    offsets_array = check_offsets(offsets, len(spatial))
    values = embeddings.astype(np.float32, copy=False)
    distances = np.zeros((len(offsets_array),) + spatial, dtype=np.float32)
    valid = np.zeros(distances.shape, dtype=bool)
    for c, offset in enumerate(offsets_array):
        source, target = neighbour_slices(offset, spatial)
        distances[(c,) + source] = _distance(values[(slice(None),) + source], values[(slice(None),) + target], distance_type)
        valid[(c,) + source] = True
    return distances, valid


def _push_affinity(distance: np.ndarray, delta: float) -> np.ndarray:
    # The discriminative loss pushes cluster centres 2 * delta apart: at that
    # distance (or more) the affinity is 0, at distance 0 it is 1, squared in
    # between as in Lee et al. 2019 ("Learning dense voxel embeddings").
    return np.maximum((2.0 * delta - distance) / (2.0 * delta), 0.0) ** 2


def push_dissimilarity(distances: np.ndarray, delta: float) -> np.ndarray:
    """``1 - max((2 delta - d) / (2 delta), 0) ** 2``: 0 for equal embeddings, 1 at ``2 delta`` or more.

    The weight function elf pairs with the mutex watershed on embeddings
    trained with push margin ``delta``; use it as
    ``weight_function=functools.partial(push_dissimilarity, delta=delta)``.

    Examples
    --------
    >>> import numpy as np
    >>> push_dissimilarity(np.array([0.0, 1.0, 2.0, 3.0]), delta=1.0).tolist()
    [0.0, 0.75, 1.0, 1.0]
    """
    delta = _check_positive(delta, "delta")
    return 1.0 - _push_affinity(np.asarray(distances, dtype=np.float64), delta)


def embeddings_to_affinities(
    embeddings: np.ndarray, offsets: Sequence[Sequence[int]], delta: float, invert: bool = False
) -> np.ndarray:
    """Affinities from embeddings: ``max((2 delta - ||x_p - x_{p+o}||) / (2 delta), 0) ** 2``.

    Parameters
    ----------
    embeddings : ndarray, shape (E, *spatial)
        2D or 3D, finite.
    offsets : sequence of sequence of int
        Channel ``c`` compares pixel ``p`` with ``p + offsets[c]``.
    delta : float
        The push margin of the discriminative loss the embeddings were
        trained with (> 0).
    invert : bool
        Return ``1 - affinity`` (a boundary map).

    Returns
    -------
    ndarray of float32, shape (len(offsets), *spatial)
        In [0, 1]; where ``p + offset`` lies outside the array the affinity
        is 0 (1 when inverted): no neighbour, no evidence of one object.

    Examples
    --------
    >>> import numpy as np
    >>> embeddings = np.array([[[0.0, 1.0, 4.0]]])
    >>> embeddings_to_affinities(embeddings, [[0, 1]], delta=1.0).tolist()
    [[[0.25, 0.0, 0.0]]]
    """
    delta = _check_positive(delta, "delta")
    distances, valid = embedding_distances(embeddings, offsets, "l2")
    affinities = np.where(valid, _push_affinity(distances, delta), 0.0).astype(np.float32)
    return (1.0 - affinities).astype(np.float32) if invert else affinities


def segment_adjacency(segmentation: np.ndarray) -> np.ndarray:
    """Pairs of different non-zero labels that touch across a face, sorted and unique.

    Parameters
    ----------
    segmentation : ndarray of int, 2D or 3D

    Returns
    -------
    ndarray of uint64, shape (M, 2), with ``u < v`` in each row.

    Examples
    --------
    >>> import numpy as np
    >>> segment_adjacency(np.array([[1, 1, 2], [3, 0, 2]])).tolist()
    [[1, 2], [1, 3]]
    """
    segmentation = np.asarray(segmentation)
    if segmentation.ndim not in (2, 3) or not np.issubdtype(segmentation.dtype, np.integer):
        raise ValueError(f"segmentation must be a 2D or 3D integer label image; got {segmentation.dtype} {segmentation.shape}")
    labels = segmentation.astype(np.uint64, copy=False)
    pairs = []
    for axis in range(labels.ndim):
        a = np.moveaxis(labels, axis, 0)[:-1].ravel()
        b = np.moveaxis(labels, axis, 0)[1:].ravel()
        touching = (a != b) & (a != 0) & (b != 0)
        pairs.append(np.stack([np.minimum(a[touching], b[touching]), np.maximum(a[touching], b[touching])], axis=1))
    edges = np.concatenate(pairs, axis=0)
    return np.unique(edges, axis=0) if len(edges) else np.zeros((0, 2), dtype=np.uint64)


def segment_mean_embeddings(embeddings: np.ndarray, segmentation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean embedding of every label of ``segmentation`` (0 included if present).

    Returns
    -------
    ids : ndarray of uint64, shape (K,)
        Sorted labels.
    means : ndarray of float64, shape (K, E)

    Examples
    --------
    >>> import numpy as np
    >>> ids, means = segment_mean_embeddings(np.array([[[1.0, 3.0, 5.0]]]), np.array([[2, 2, 7]]))
    >>> ids.tolist(), means.tolist()
    ([2, 7], [[2.0], [5.0]])
    """
    embeddings = _check_embeddings(embeddings)
    segmentation = np.asarray(segmentation)
    if segmentation.shape != embeddings.shape[1:] or not np.issubdtype(segmentation.dtype, np.integer):
        raise ValueError(
            f"segmentation must be an integer label image of the embeddings' spatial shape {embeddings.shape[1:]}; "
            f"got {segmentation.dtype} {segmentation.shape}"
        )
    ids, inverse = np.unique(segmentation.ravel(), return_inverse=True)
    counts = np.bincount(inverse, minlength=len(ids)).astype(np.float64)
    flat = embeddings.reshape(embeddings.shape[0], -1)
    means = np.stack([np.bincount(inverse, weights=channel, minlength=len(ids)) for channel in flat], axis=1)
    return ids.astype(np.uint64), means / counts[:, None]


def edge_probabilities_from_embeddings(
    embeddings: np.ndarray, segmentation: np.ndarray, edges: np.ndarray, delta: float
) -> np.ndarray:
    """Boundary probability of RAG edges from the segments' mean embeddings.

    ``p(u, v) = 1 - max((2 delta - ||m_u - m_v||) / (2 delta), 0) ** 2``
    with ``m`` the mean embedding of a segment: 0 for segments whose means
    coincide, 1 once they are ``2 delta`` apart.

    Parameters
    ----------
    embeddings : ndarray, shape (E, *spatial)
    segmentation : ndarray of int, shape spatial
    edges : ndarray, shape (M, 2)
        Pairs of labels of ``segmentation`` (e.g. :func:`segment_adjacency`).
    delta : float
        Push margin of the loss (> 0).

    Returns
    -------
    ndarray of float32, shape (M,)

    Examples
    --------
    >>> import numpy as np
    >>> embeddings = np.array([[[0.0, 0.0, 1.0]]])
    >>> edge_probabilities_from_embeddings(embeddings, np.array([[1, 1, 2]]), np.array([[1, 2]]), delta=1.0).tolist()
    [0.75]
    """
    delta = _check_positive(delta, "delta")
    ids, means = segment_mean_embeddings(embeddings, segmentation)
    edges = np.asarray(edges)
    if edges.size == 0:
        return np.zeros(0, dtype=np.float32)
    if edges.ndim != 2 or edges.shape[1] != 2 or not np.issubdtype(edges.dtype, np.integer):
        raise ValueError(f"edges must be an (M, 2) integer array of label pairs; got {edges.dtype} {edges.shape}")
    if np.any(edges < 0):
        raise ValueError("edges must hold labels of the segmentation; got negative ids")
    edges = edges.astype(np.uint64)
    position = np.searchsorted(ids, edges)
    found = (position < len(ids)) & (ids[np.minimum(position, len(ids) - 1)] == edges)
    if not np.all(found):
        missing = np.unique(edges[~found])[:5].tolist()
        raise ValueError(f"edges name labels that are not in the segmentation, e.g. {missing}")
    distance = np.linalg.norm(means[position[:, 0]] - means[position[:, 1]], axis=1)
    return (1.0 - _push_affinity(distance, delta)).astype(np.float32)


# ----------------------------------------------------------------------------
# clustering
# ----------------------------------------------------------------------------


def _pixels(embeddings: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """(N, E) embedding vectors of the pixels in ``mask`` (all pixels without one), in C order."""
    flat = embeddings.reshape(embeddings.shape[0], -1).T
    return flat if mask is None else flat[mask.ravel()]


def _scatter(cluster_ids: np.ndarray, spatial: tuple[int, ...], mask: np.ndarray | None) -> np.ndarray:
    """Put per-pixel cluster ids (-1 = noise) back into an image: noise and outside the mask are 0."""
    labels = np.zeros(int(np.prod(spatial)), dtype=np.int64)
    if mask is None:
        labels[:] = cluster_ids + 1
    else:
        labels[mask.ravel()] = cluster_ids + 1
    return labels.reshape(spatial)


def _mean_shift_labels(embeddings: np.ndarray, bandwidth: float, mask: np.ndarray | None, n_jobs: int) -> np.ndarray:
    from sklearn.cluster import MeanShift

    vectors = _pixels(embeddings, mask)
    if len(vectors) == 0:
        return np.zeros(embeddings.shape[1:], dtype=np.int64)
    # bin_seeding starts one climb per occupied bandwidth-sized bin instead
    # of per pixel: the same modes, orders of magnitude fewer climbs.
    estimator = MeanShift(bandwidth=bandwidth, bin_seeding=True, n_jobs=n_jobs)
    return _scatter(estimator.fit_predict(vectors.astype(np.float64)), embeddings.shape[1:], mask)


def segment_mean_shift(
    embeddings: np.ndarray, bandwidth: float, *, mask: np.ndarray | None = None, n_jobs: int = 1
) -> np.ndarray:
    """Instances by mean-shift clustering of the pixel embeddings (scikit-learn's ``MeanShift``).

    Every pixel (in ``mask``) joins the mode its embedding climbs to with a
    flat kernel of radius ``bandwidth``; seeds are binned (``bin_seeding``).
    There is no spatial term: two objects with the same embedding are one.

    Parameters
    ----------
    embeddings : ndarray, shape (E, *spatial)
    bandwidth : float
        Kernel radius in embedding space (> 0); about ``delta`` for a
        discriminative loss with push margin ``2 * delta``.
    mask : ndarray of bool, optional
        Pixels to cluster; the rest are 0.
    n_jobs : int
        Parallel jobs of the estimator.

    Returns
    -------
    ndarray of uint64, shape spatial

    Examples
    --------
    >>> import numpy as np
    >>> embeddings = np.array([[[0.0, 0.1, 5.0, 5.1]]])
    >>> segment_mean_shift(embeddings, bandwidth=1.0).tolist()
    [[1, 1, 2, 2]]
    """
    embeddings = _check_embeddings(embeddings)
    bandwidth = _check_positive(bandwidth, "bandwidth")
    mask = _check_mask(mask, embeddings.shape[1:])
    return _number_by_first_pixel(_mean_shift_labels(embeddings, bandwidth, mask, n_jobs))


def segment_hdbscan(
    embeddings: np.ndarray,
    min_size: int,
    eps: float = 0.0,
    *,
    remove_largest: bool = False,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Instances by HDBSCAN clustering of the pixel embeddings (scikit-learn's ``HDBSCAN``).

    Parameters
    ----------
    embeddings : ndarray, shape (E, *spatial)
    min_size : int
        Smallest cluster, in pixels (``min_cluster_size``, >= 2).
    eps : float
        ``cluster_selection_epsilon``: clusters closer than this are not split (>= 0).
    remove_largest : bool
        Set the largest label to 0, for embeddings whose background is one
        big cluster. The count includes 0 (noise, outside the mask): when 0
        is already the largest, nothing is removed.
    mask : ndarray of bool, optional
        Semantic mask: only these pixels are clustered; the rest are 0.

    Returns
    -------
    ndarray of uint64, shape spatial
        HDBSCAN's noise pixels are 0.

    Examples
    --------
    >>> import numpy as np
    >>> embeddings = np.array([[[0.0, 0.1, 0.2, 5.0, 5.1, 5.2]]])
    >>> segment_hdbscan(embeddings, min_size=2).tolist()
    [[1, 1, 1, 2, 2, 2]]
    """
    from sklearn.cluster import HDBSCAN

    embeddings = _check_embeddings(embeddings)
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 2:
        raise ValueError(f"min_size must be an integer >= 2 (HDBSCAN's smallest cluster); got {min_size!r}")
    try:
        eps = float(eps)
    except (TypeError, ValueError) as error:
        raise ValueError(f"eps must be a non-negative number; got {eps!r}") from error
    if not np.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a non-negative finite number; got {eps!r}")
    mask = _check_mask(mask, embeddings.shape[1:])
    vectors = _pixels(embeddings, mask)
    spatial = embeddings.shape[1:]
    if len(vectors) < 2:
        return np.zeros(spatial, dtype=np.uint64)
    # our vectors are a fresh float64 copy already; no need for another
    estimator = HDBSCAN(min_cluster_size=int(min_size), cluster_selection_epsilon=eps, copy=False)
    labels = _scatter(estimator.fit_predict(vectors.astype(np.float64)), spatial, mask)
    if remove_largest:
        ids, counts = np.unique(labels, return_counts=True)
        labels[labels == ids[np.argmax(counts)]] = 0
    return _number_by_first_pixel(labels)


def segment_consistency(
    embeddings1: np.ndarray,
    embeddings2: np.ndarray,
    bandwidth: float,
    iou_threshold: float,
    n_anchors: int,
    *,
    mask: np.ndarray | None = None,
    seed: int = 0,
    n_jobs: int = 1,
) -> np.ndarray:
    """Mean-shift instances of one embedding kept only where a second embedding agrees.

    Each mean-shift cluster of ``embeddings1`` is checked against
    ``embeddings2``: for ``n_anchors`` random pixels of the cluster, the
    pixels whose ``embeddings2`` vector lies within ``bandwidth`` of the
    anchor's form an instance mask; the cluster survives when the median IoU
    of these masks with the cluster reaches ``iou_threshold``. Two
    embeddings (e.g. from two heads or two augmentations) that agree on an
    object make it trustworthy.

    Parameters
    ----------
    embeddings1, embeddings2 : ndarray, shape (E1, *spatial), (E2, *spatial)
        Same spatial shape, 2D or 3D.
    bandwidth : float
        Mean-shift bandwidth and anchor radius (> 0).
    iou_threshold : float
        In [0, 1].
    n_anchors : int
        Anchors per cluster (>= 1).
    mask : ndarray of bool, optional
        Pixels to cluster; anchors' masks are restricted to it too.
    seed : int
        Seed of the anchor draw (the result is deterministic).
    n_jobs : int
        Parallel jobs of the mean shift.

    Returns
    -------
    ndarray of uint64, shape spatial
        Surviving clusters ``1..n``; removed ones and background are 0.

    Examples
    --------
    >>> import numpy as np
    >>> first = np.array([[[0.0, 0.0, 5.0, 5.0]]])
    >>> second = np.array([[[0.0, 0.0, 5.0, 0.0]]])  # disagrees on the second object
    >>> segment_consistency(first, second, 1.0, 0.5, n_anchors=3).tolist()
    [[1, 1, 0, 0]]
    """
    embeddings1 = _check_embeddings(embeddings1, "embeddings1")
    embeddings2 = _check_embeddings(embeddings2, "embeddings2")
    if embeddings1.shape[1:] != embeddings2.shape[1:]:
        raise ValueError(
            f"embeddings1 and embeddings2 must share the spatial shape; got {embeddings1.shape[1:]} and {embeddings2.shape[1:]}"
        )
    bandwidth = _check_positive(bandwidth, "bandwidth")
    iou_threshold = _check_probability(iou_threshold, "iou_threshold")
    if isinstance(n_anchors, bool) or not isinstance(n_anchors, (int, np.integer)) or n_anchors < 1:
        raise ValueError(f"n_anchors must be a positive integer; got {n_anchors!r}")
    spatial = embeddings1.shape[1:]
    mask = _check_mask(mask, spatial)
    labels = _mean_shift_labels(embeddings1, bandwidth, mask, n_jobs).ravel()
    second = embeddings2.reshape(embeddings2.shape[0], -1).astype(np.float64)
    inside = np.ones(labels.shape, bool) if mask is None else mask.ravel()
    rng = np.random.default_rng(seed)
    for label in np.unique(labels[labels > 0]):
        cluster = labels == label
        members = np.flatnonzero(cluster)
        ious = []
        for anchor in rng.choice(members, size=int(n_anchors), replace=True):
            near = (np.linalg.norm(second - second[:, anchor : anchor + 1], axis=0) < bandwidth) & inside
            ious.append(np.count_nonzero(near & cluster) / np.count_nonzero(near | cluster))
        if np.median(ious) < iou_threshold:
            labels[cluster] = 0
    return _number_by_first_pixel(labels.reshape(spatial))


# ----------------------------------------------------------------------------
# mutex watershed on embeddings
# ----------------------------------------------------------------------------


def segment_embeddings_mws(
    embeddings: np.ndarray,
    offsets: Sequence[Sequence[int]],
    distance_type: str = "l2",
    *,
    bias: float = 0.0,
    strides: Sequence[int] | None = None,
    randomize_strides: bool = False,
    weight_function: Callable[[np.ndarray], np.ndarray] | None = None,
    mask: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Instances by the mutex watershed on embedding distances.

    The graph, as elf builds it: attractive edges between face neighbours
    (always all of them, whichever unit offsets ``offsets`` lists), repulsive
    edges for the offsets of L1 length > 1. Each edge gets a dissimilarity
    ``w = weight_function(d)`` of the distance ``d`` of its two embeddings
    (``w = d`` without a weight function). Attractive edges act in order of
    ``max(w_attractive) - w`` (the maximum over every face edge of the array,
    masked or not, so a mask removes edges without reordering the others)
    and repulsive ones of ``w + bias``, compared directly (:func:`workers.mutex.mutex_watershed`, classic mode): a
    positive bias splits more, a negative one merges more.

    Parameters
    ----------
    embeddings : ndarray, shape (E, *spatial)
        2D or 3D, finite.
    offsets : sequence of sequence of int
        Offsets; those of L1 length > 1 become repulsive channels (at least one).
    distance_type : {"l2", "cosine", "l1"}
        See :func:`embedding_distances`.
    bias : float
        Added to the repulsive priorities.
    strides, randomize_strides, seed
        Subsample the repulsive edges (see :func:`workers.mutex.mutex_watershed`).
    weight_function : callable, optional
        Maps an array of distances to dissimilarities of the same shape,
        per channel, e.g. ``functools.partial(push_dissimilarity, delta=delta)``.
        With raw distances the split between attraction and repulsion
        depends on the largest distance in the block; a bounded weight makes
        it depend on ``delta`` only.
    mask : ndarray of bool, optional
        Pixels to segment; edges touching the rest are dropped and the rest is 0.

    Returns
    -------
    ndarray of uint64, shape spatial
        Labels ``1..n`` by first pixel in C order, 0 outside ``mask``.

    Notes
    -----
    Where elf's version differs: it ignores a negative bias, subsamples
    repulsive edges by their position in an edge list (at random unless a
    weight function is given) rather than on a pixel lattice, and lets masked
    pixels join objects through weakly attractive edges; here the mask cuts
    every edge that touches its background.

    Examples
    --------
    >>> import numpy as np
    >>> embeddings = np.zeros((1, 1, 8))
    >>> embeddings[0, 0, 4:] = 3.0            # two objects along a row
    >>> segment_embeddings_mws(embeddings, [[0, -1], [0, -3]]).tolist()
    [[1, 1, 1, 1, 2, 2, 2, 2]]
    """
    embeddings = _check_embeddings(embeddings)
    distance_type = _check_distance_type(distance_type)
    spatial = embeddings.shape[1:]
    ndim = len(spatial)
    offsets_array = check_offsets(offsets, ndim)
    long_range = offsets_array[np.abs(offsets_array).sum(axis=1) > 1]
    if len(long_range) == 0:
        raise ValueError("the mutex watershed needs at least one long-range offset (L1 length > 1) for repulsive edges")
    try:
        bias = float(bias)
    except (TypeError, ValueError) as error:
        raise ValueError(f"bias must be a finite number; got {bias!r}") from error
    if not np.isfinite(bias):
        raise ValueError(f"bias must be a finite number; got {bias!r}")
    mask = _check_mask(mask, spatial)

    # Negative unit steps, like elf's grid graph: the edge (p - e_i, p) sits at p.
    unit = -np.eye(ndim, dtype=np.int64)
    all_offsets = np.concatenate([unit, long_range], axis=0)
    distances, valid = embedding_distances(embeddings, all_offsets, distance_type)
    weights = distances
    if weight_function is not None:
        weights = np.asarray(weight_function(distances), dtype=np.float64)
        if weights.shape != distances.shape:
            raise ValueError(f"weight_function must return an array of the distances' shape {distances.shape}; got {weights.shape}")
        if not np.all(np.isfinite(weights[valid])):
            raise ValueError("weight_function returned NaN or infinite values")

    # The attractive scale comes from every face edge of the array, masked
    # or not: the mask only removes edges, it must not change the order of
    # the others (elf's maximum runs over all grid edges too). A mask that
    # hides every boundary would otherwise leave only within-object
    # distances to set the scale, and repulsion would win everywhere.
    local = weights[:ndim]
    highest = float(local[valid[:ndim]].max()) if valid[:ndim].any() else 0.0

    # Classic mode priorities: attractive = affinity + bias, repulsive =
    # 1 - affinity + bias. Storing max(w) - w and 1 - w gives the priorities
    # above without touching the affinities' meaning (1 = same object).
    affinities = np.empty(weights.shape, dtype=np.float64)
    affinities[:ndim] = highest - local
    affinities[ndim:] = 1.0 - weights[ndim:]
    affinities[~valid] = 0.0
    channel_bias = [0.0] * ndim + [bias] * len(long_range)
    return mutex_watershed(
        affinities,
        all_offsets.tolist(),
        bias=channel_bias,
        attractive=ndim,
        strides=strides,
        randomize_strides=randomize_strides,
        mask=mask,
        seed=seed,
    )
